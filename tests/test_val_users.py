"""Validation on a fixed sample of users (`data.val_users`), and the blocked top-K that ranks large catalogues."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from recsys_lightning.build import build_module
from recsys_lightning.data.batches import RankingChunks
from recsys_lightning.errors import ConfigError
from recsys_lightning.metrics import METRIC_NAMES, per_user_metrics
from recsys_lightning.module import RecommenderModule
from recsys_lightning.ranking import BLOCKED_TOP_K_MIN_ITEMS, hits, top_k, top_k_unseen
from recsys_lightning.validation import check_training_config

from helpers import FrameDataModule, module_config, quiet_trainer, random_interactions, training_config

KS = (5, 10)


def frame() -> pd.DataFrame:
    """300 users with one validation item each, and 100 with too few interactions to have any; 60 items,
    so even random scores find some held-out items in a top 10."""
    few = random_interactions(100, 60, 3, seed=1).assign(user_id=lambda f: f.user_id + 1000)
    return pd.concat([random_interactions(300, 60, 12), few], ignore_index=True)


def datamodule(val_users: int | None = None, seed: int = 0) -> FrameDataModule:
    data = FrameDataModule(frame(), val_users=val_users, seed=seed)
    data.setup("fit")
    return data


def users_with_validation_items(data: FrameDataModule) -> torch.Tensor:
    return torch.nonzero(data.valid_positives.counts() > 0).flatten()


def test_sample_is_fixed_for_a_seed_and_changes_with_it():
    first = datamodule(val_users=40).validation_users()
    assert torch.equal(first, datamodule(val_users=40).validation_users())  # a fresh run (or a resumed one)
    assert not torch.equal(first, datamodule(val_users=40, seed=1).validation_users())


def test_sample_has_n_distinct_users_with_validation_items():
    data = datamodule(val_users=40)
    sample = data.validation_users()
    eligible = users_with_validation_items(data)
    assert len(eligible) == 300  # the 100 users without validation items are never drawn
    assert len(sample) == 40 and len(sample.unique()) == 40
    assert torch.isin(sample, eligible).all()
    assert torch.equal(sample, sample.sort().values)


@pytest.mark.parametrize("val_users", [None, 300, 10_000])
def test_no_sample_or_one_as_large_as_the_users_validates_them_all(val_users):
    data = datamodule(val_users=val_users)
    assert torch.equal(data.validation_users(), users_with_validation_items(data))


def test_processes_validate_disjoint_shards_of_the_sample():
    data = datamodule(val_users=41)
    sample = data.validation_users()
    shards = [RankingChunks(data.valid_positives, data.train_positives, 8, rank, 2, sample) for rank in (0, 1)]
    users = [torch.cat([chunk.users for chunk in shard.chunks]) for shard in shards]
    assert len(users[0]) == 21 and len(users[1]) == 20
    assert torch.equal(torch.cat(users).sort().values, sample)


def reference_per_user(module, users, heldout, seen) -> torch.Tensor:
    """[metric, k, user] metrics of `users` ranked the way evaluation did before blocked top-K: the whole
    row's `topk` after hiding the user's seen items."""
    with torch.no_grad():
        scores = module.model.score_all(users)
    exclude_rows, exclude_items = seen.coordinates(users)
    scores[exclude_rows, exclude_items] = -torch.inf
    top_items = scores.topk(max(KS), dim=1).indices
    heldout_rows, heldout_items = heldout.coordinates(users)
    found = hits(top_items, heldout_rows, heldout_items, scores.shape[1])
    return per_user_metrics(found, torch.bincount(heldout_rows, minlength=len(users)), KS)


def as_dict(per_user: torch.Tensor) -> dict[str, float]:
    means = per_user.mean(-1)
    return {f"{name}@{k}": means[m, j].item() for m, name in enumerate(METRIC_NAMES) for j, k in enumerate(KS)}


def evaluated(data: FrameDataModule, stage: str) -> tuple[dict[str, float], RecommenderModule]:
    """The `stage` ("val" or "test") metrics of an untrained MF, and the module."""
    torch.manual_seed(0)  # the same untrained MF every call: random scores, no ties
    module = build_module(module_config(eval={"ks": list(KS)}), data.training_data)
    trainer = quiet_trainer()
    (trainer.validate if stage == "val" else trainer.test)(module, datamodule=data, verbose=False)
    prefix = f"{stage}/"
    metrics = {name.removeprefix(prefix): value.item() for name, value in trainer.callback_metrics.items() if name.startswith(prefix)}
    return metrics, module


def assert_same(ours: dict[str, float], reference: dict[str, float]) -> None:
    assert reference["recall@10"] > 0  # not a trivial all-zero comparison
    for name, value in reference.items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name


def test_validation_of_all_users_equals_the_reference_over_every_user():
    data = datamodule()
    ours, module = evaluated(data, "val")
    users = users_with_validation_items(data)
    assert_same(ours, as_dict(reference_per_user(module, users, data.valid_positives, data.train_positives)))


def test_validation_of_a_sample_equals_the_per_user_reference_averaged_over_the_sample():
    sampled = datamodule(val_users=60)
    ours, module = evaluated(sampled, "val")
    everyone = users_with_validation_items(sampled)
    per_user = reference_per_user(module, everyone, sampled.valid_positives, sampled.train_positives)
    positions = torch.searchsorted(everyone, sampled.validation_users())
    assert_same(ours, as_dict(per_user[..., positions]))
    assert ours != as_dict(per_user)  # 60 of 300 users: not the full figure by accident


def test_test_ranks_every_user_whatever_the_validation_sample():
    sampled, full = datamodule(val_users=30), datamodule()
    sampled_metrics, module = evaluated(sampled, "test")
    assert sampled_metrics == evaluated(full, "test")[0]
    test_users = torch.nonzero(sampled.test_positives.counts() > 0).flatten()
    assert torch.equal(torch.cat([chunk.users for chunk in sampled.test_dataloader().dataset.chunks]), test_users)
    seen = sampled.train_positives.union(sampled.valid_positives)
    assert_same(sampled_metrics, as_dict(reference_per_user(module, test_users, sampled.test_positives, seen)))


@pytest.mark.parametrize(("value", "accepted"), [("null", True), ("1", True), ("20000", True), ("0", False), ("-3", False), ("2.5", False)])
def test_val_users_is_null_or_an_integer_of_at_least_one(value, accepted):
    cfg = training_config(f"data.val_users={value}")
    if accepted:
        check_training_config(cfg)
    else:
        with pytest.raises(ConfigError, match=rf"data.val_users={value}: must be an integer >= 1 or null"):
            check_training_config(cfg)


# -- blocked top-K against the whole-row topk it replaces -------------------------------------------


def random_scores(rows: int, items: int, seed: int, ties: bool) -> torch.Tensor:
    """Scores with -inf (hidden items) in ~30% of places and a few rows all but hidden; with `ties`,
    integer scores from a small range, so most values repeat within a row."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 7, (rows, items), generator=generator).float() if ties else torch.randn(rows, items, generator=generator)
    scores[torch.rand(rows, items, generator=generator) < 0.3] = -torch.inf
    scores[:3, 3:] = -torch.inf  # 3 unhidden items left in these rows: k beyond them
    return scores


def assert_same_top_k(ours: torch.Tensor, scores: torch.Tensor, k: int) -> None:
    """Ties aside: the same scores, best first, each item once."""
    reference = scores.topk(min(k, scores.shape[1]), dim=1)
    assert ours.shape == reference.indices.shape
    assert torch.equal(scores.gather(1, ours), reference.values)
    assert all(len(row.unique()) == len(row) for row in ours)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("items", "k", "block_size"), [(103, 5, 4), (103, 20, 4), (100, 10, 7), (64, 3, 8), (40, 200, 4), (103, 20, 0)])
def test_blocked_top_k_equals_whole_row_topk(seed, ties, items, k, block_size):
    scores = random_scores(17, items, seed, ties)
    ours = top_k(scores, k, block_size)
    assert_same_top_k(ours, scores, k)
    if not ties:
        assert torch.equal(ours[3:], scores[3:].topk(min(k, items), dim=1).indices)


def test_blocked_top_k_of_a_wide_catalogue_equals_topk():
    items = BLOCKED_TOP_K_MIN_ITEMS + 37  # the blocks chosen from the shape, and a tail after the last one
    scores = random_scores(6, items, seed=5, ties=False)
    for k in (1, 10, 20, 100):
        ours = top_k(scores, k)
        assert_same_top_k(ours, scores, k)
        assert torch.equal(ours[3:], scores[3:].topk(k, dim=1).indices)  # no ties in rows with items to spare
    ties = random_scores(4, items, seed=6, ties=True)
    assert_same_top_k(top_k(ties, 20), ties, 20)


def test_top_k_unseen_never_ranks_a_hidden_item_while_unhidden_ones_remain():
    scores = torch.arange(300.0).repeat(3, 1)
    hidden_rows, hidden_items = torch.tensor([0, 0, 1, 2]), torch.tensor([299, 290, 299, 0])
    top = top_k_unseen(scores, hidden_rows, hidden_items, 5)
    assert top.tolist() == [[298, 297, 296, 295, 294], [298, 297, 296, 295, 294], [299, 298, 297, 296, 295]]
