"""Trains MF for two epochs on in-memory shares of small synthetic data, one rank per process, as
`torchrun --nproc-per-node W tests/prepared_ranks.py <out dir>` starts it (test_prepared_training.py);
with a last argument `movielens`, the main job's MF/BPR on ML-100K instead (global batch 4096): the
issue's W=2 against W=1 figure.

Each rank writes rank<r>.json: the (user, item) training pairs it saw in each epoch, its steps, and
the validation metrics after training (summed over the ranks by the metrics themselves), and the closing
note's popularity baseline on the same validation users."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from recsys_lightning.baseline_note import popularity_on_validation
from recsys_lightning.build import build_module
from recsys_lightning.data.movielens import MovieLensDataModule
from recsys_lightning.data.synthetic import SyntheticDataModule
from recsys_lightning.prepared.datamodule import PreparedDataModule
from recsys_lightning.seeds import stream_seed

from helpers import ROOT, MemoryShares, module_config, training_config

SYNTHETIC = dict(num_users=300, num_items=200, num_interactions=6000, batch_size=256, seed=0)


class PairsSeen(pl.Callback):
    """The training pairs of every batch, by epoch."""

    def __init__(self) -> None:
        self.epochs: list[list[list[int]]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append([])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self.epochs[-1] += torch.stack([batch.users, batch.items], 1).tolist()


def main(out: Path, data: str) -> None:
    torch.set_num_threads(1)
    if data == "movielens":
        cfg = training_config()
        single = MovieLensDataModule(str(ROOT / "data"), seed=cfg.seed)
    else:
        cfg, single = module_config(), SyntheticDataModule(**SYNTHETIC)
    single.setup("fit")
    datamodule = PreparedDataModule.from_source(MemoryShares(single), batch_size=single.batch_size, seed=cfg.seed)
    datamodule.setup("fit")
    pl.seed_everything(stream_seed(cfg.seed, "init") % 2**32)
    module = build_module(cfg, datamodule.training_data)
    seen = PairsSeen()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=datamodule.world,
        strategy="ddp" if datamodule.world > 1 else "auto",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[seen],
    )
    trainer.fit(module, datamodule=datamodule)
    metrics = {name: value.item() for name, value in trainer.callback_metrics.items() if name.startswith("val/")}
    popularity = popularity_on_validation(datamodule, [10], distributed=datamodule.world > 1)
    record = {"steps": trainer.global_step, "epochs": seen.epochs, "metrics": metrics, "batch": datamodule.rank_batch_size}
    record["popularity"] = popularity
    (out / f"rank{datamodule.rank}.json").write_text(json.dumps(record))
    if torch.distributed.is_initialized():  # no rank exits while another's last exchange is in flight (a C++ terminate)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "synthetic")
