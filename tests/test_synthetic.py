"""Synthetic data: reproducible, power-law popular, and with structure a model learns beyond popularity."""

import numpy as np
import pytest
import pytorch_lightning as pl

from recsys_lightning.build import build_module
from recsys_lightning.data.synthetic import SyntheticDataModule, generate_interactions
from recsys_lightning.errors import ConfigError
from recsys_lightning.metrics import RankingMetrics
from recsys_lightning.ranking import top_k_unseen

from helpers import module_config, quiet_trainer


def top_decile_share(frame, num_items):
    counts = np.sort(np.bincount(frame.item_id, minlength=num_items))[::-1]
    return counts[: num_items // 10].sum() / counts.sum()


def test_generation_is_seeded_distinct_and_long_tailed():
    frame = generate_interactions(3000, 400, 20_000, popularity_exponent=1.0, seed=3)
    assert frame.equals(generate_interactions(3000, 400, 20_000, popularity_exponent=1.0, seed=3))
    assert not frame.equals(generate_interactions(3000, 400, 20_000, popularity_exponent=1.0, seed=4))
    assert len(frame) == 20_000 and not frame.duplicated(["user_id", "item_id"]).any()
    # Zipf popularity puts ~40% of interactions on the top 10% of items; without it, ~13%.
    assert top_decile_share(frame, 400) > 0.3
    assert top_decile_share(generate_interactions(3000, 400, 20_000, popularity_exponent=0.0, seed=3), 400) < 0.2


def test_impossible_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="at most half"):
        generate_interactions(10, 10, 80)


def popularity_recall_at_10(datamodule) -> float:
    """Recall@10 of ranking every user's unseen items by training popularity, with our ranking code."""
    counts = datamodule.training_data.positives.item_counts.float()
    metric = RankingMetrics([10])
    for chunk in datamodule.test_dataloader():
        top = top_k_unseen(counts.expand(len(chunk.users), -1).clone(), chunk.exclude_rows, chunk.exclude_items, 10)
        metric.update_ranked(top, chunk, datamodule.num_items)
    return metric.compute()["recall@10"].item()


def test_mf_learns_planted_structure_far_beyond_popularity(tmp_path):
    pl.seed_everything(0, verbose=False)
    datamodule = SyntheticDataModule(num_users=1500, num_items=800, num_interactions=60_000, num_clusters=8, batch_size=2048, seed=0)
    datamodule.setup("fit")
    config = module_config(
        loss={"_target_": "recsys_lightning.losses.BPRLoss", "l2": 1e-3},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.02},
    )
    module = build_module(config, datamodule.training_data)
    trainer = quiet_trainer(max_epochs=8, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=datamodule)
    learned = trainer.test(module, datamodule=datamodule, verbose=False)[0]["test/recall@10"]
    baseline = popularity_recall_at_10(datamodule)
    assert learned > 3.0 * baseline, (learned, baseline)
