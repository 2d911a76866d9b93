"""Feature-aware MF (LightFM-style): an item's vector is its id embedding plus its features' mean, and an
item without training interactions is scored from its features alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_lightning.build import build_module
from recsys_lightning.data.datamodule import LoadedInteractions
from recsys_lightning.data.features import FeatureColumns, FeatureTable
from recsys_lightning.models import HybridMF, MatrixFactorization

from helpers import FrameDataModule, module_config, planted_frame, quiet_trainer

NUM_USERS, NUM_ITEMS = 6, 8


def table(rows: list[list[int]], num_features: int) -> FeatureTable:
    counts = torch.tensor([len(row) for row in rows])
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    indices = torch.tensor([feature for row in rows for feature in sorted(row)], dtype=torch.long)
    return FeatureTable([f"f={i}" for i in range(num_features)], indptr, indices)


ITEM_FEATURES = table([[0], [1, 2], [], [0, 3], [2], [1], [3], [0, 1]], 4)  # item 2 has none
USER_FEATURES = table([[0], [1], [0], [1], [], [0]], 2)
ITEM_COUNTS = torch.tensor([3, 1, 2, 0, 5, 1, 0, 2])  # items 3 and 6 are cold
USER_COUNTS = torch.tensor([2, 2, 0, 1, 3, 4])  # user 2 is cold


def model(bias: bool = True, users: bool = True, seed: int = 0, hybrid: bool = False) -> MatrixFactorization | HybridMF:
    torch.manual_seed(seed)
    sizes = {"features": True, "num_item_features": 4, "num_user_features": 2 if users else 0}
    if hybrid:
        mf = HybridMF(NUM_USERS, NUM_ITEMS, dim=5, hidden=[4], zero_init_mlp=False, **sizes).eval()
    else:
        mf = MatrixFactorization(NUM_USERS, NUM_ITEMS, dim=5, bias=bias, **sizes)
    with torch.no_grad():  # biases start at zero: make them count
        for parameter in mf.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    mf.set_features(ITEM_FEATURES.mean_matrix(), USER_FEATURES.mean_matrix() if users else None, ITEM_COUNTS, USER_COUNTS)
    return mf


@pytest.mark.parametrize("bias, hybrid", [(True, False), (False, False), (False, True)], ids=["mf", "mf-no-bias", "hybrid"])
def test_every_scoring_path_agrees(bias, hybrid):
    mf = model(bias, hybrid=hybrid)
    users = torch.arange(NUM_USERS)
    full = mf.score_all(users)
    items = torch.tensor([[1, 3, 6], [0, 2, 7], [3, 3, 4], [5, 6, 1], [2, 0, 3], [7, 6, 5]])
    torch.testing.assert_close(mf.score(users, items), full.gather(1, items))
    torch.testing.assert_close(mf.score(users, items[:, 0]), full[users, items[:, 0]])
    torch.testing.assert_close(mf.score_items(users[:3], torch.tensor([6, 2, 3])), full[:3][:, [6, 2, 3]])
    if not hybrid:
        torch.testing.assert_close(mf.query_vectors(users) @ mf.item_vectors().T, full)


@pytest.mark.parametrize("bias, hybrid", [(True, False), (False, False), (False, True)], ids=["mf", "mf-no-bias", "hybrid"])
def test_ranking_against_item_rows_in_blocks_adds_each_blocks_features(bias, hybrid):
    """trainer=sharded ranks each rank's block of the item tables: with features on, the block's items add their
    features' mean (and a cold one drops its id row), and the users' queries theirs; the blocks side by side are
    `score_all` (hybrid's queries were its bare id rows before features were sharded)."""
    mf = model(bias, hybrid=hybrid).eval()
    users = torch.arange(NUM_USERS)
    with torch.no_grad():
        queries = mf.ranking_queries(users)
        tables = {name: getattr(mf, name) for name in mf.item_table_names()}
        items = torch.arange(NUM_ITEMS)
        blocks = [slice(0, 3), slice(3, 4), slice(4, NUM_ITEMS)]
        scored = [mf.score_item_rows(queries, mf.ranking_item_rows({n: t[b] for n, t in tables.items()}, items[b])) for b in blocks]
        torch.testing.assert_close(torch.cat(scored, 1), mf.score_all(users))


@pytest.mark.parametrize("hybrid", [False, True], ids=["mf", "hybrid"])
def test_a_cold_items_score_depends_on_its_features_only(hybrid):
    mf = model(hybrid=hybrid)
    users = torch.arange(NUM_USERS)
    before = mf.score_all(users)
    with torch.no_grad():
        mf.item_factors[3].add_(5.0)  # cold: untouched by any score
        if not hybrid:
            mf.item_bias[3].add_(5.0)
    torch.testing.assert_close(mf.score_all(users), before)
    with torch.no_grad():
        mf.item_factors[4].add_(1.0)  # warm: its own id embedding counts
    assert not torch.allclose(mf.score_all(users)[:, 4], before[:, 4])
    with torch.no_grad():
        mf.item_features.embedding[3].add_(1.0)  # feature 3: items 3 and 6 (both cold) move, item 0 does not
    after = mf.score_all(users)
    assert not torch.allclose(after[:, 3], before[:, 3]) and not torch.allclose(after[:, 6], before[:, 6])
    torch.testing.assert_close(after[:, 0], before[:, 0])


def test_item_vectors_are_id_plus_feature_mean():
    mf = model(bias=False, users=False)
    vectors = mf.item_vectors()
    embedding = mf.item_features.embedding
    torch.testing.assert_close(vectors[1], mf.item_factors[1] + (embedding[1] + embedding[2]) / 2)
    torch.testing.assert_close(vectors[2], mf.item_factors[2])  # no features: its id alone
    torch.testing.assert_close(vectors[3], (embedding[0] + embedding[3]) / 2)  # cold: features alone


def test_a_checkpoint_restores_the_features_without_the_data():
    mf = model()
    fresh = MatrixFactorization(NUM_USERS, NUM_ITEMS, dim=5, features=True, num_item_features=4, num_user_features=2)
    fresh.load_state_dict(mf.state_dict())
    torch.testing.assert_close(fresh.score_all(torch.arange(NUM_USERS)), mf.score_all(torch.arange(NUM_USERS)))


def test_gradients_reach_feature_embeddings_through_a_batch():
    mf = model()
    scores, penalty = mf.score_with_penalty(torch.tensor([0, 2]), torch.tensor([[3, 1], [6, 4]]))
    (scores.sum() + penalty).backward()
    assert mf.item_features.embedding.grad.abs().sum() > 0 and mf.user_features.embedding.grad.abs().sum() > 0
    assert mf.item_factors.grad[3].abs().sum() == 0  # cold item: no gradient to an id it does not use


def test_features_without_feature_data_are_refused():
    with pytest.raises(ValueError, match="needs features in the data"):
        MatrixFactorization(NUM_USERS, NUM_ITEMS, features=True)


# --- cold items, end to end on planted data ----------------------------------------------------------


class GroupFeatureDataModule(FrameDataModule):
    """`planted_frame` with one item feature, its taste group, and (by default) a cold-item split."""

    def load(self) -> LoadedInteractions:
        items = np.unique(self.frame["item_id"])
        groups = pd.DataFrame({"group": (items // 50).astype(str)})
        columns = FeatureColumns("memory", pd.Series(items.astype(str)), groups, sep=None, first_line=2)
        return replace(super().load(), item_features=columns)


def cold_item_ndcg(model: dict, eval_candidates: str = "all") -> float:
    """Test NDCG@10 after training on the warm items: every test item is one training never saw; ranked
    among all items, or (`eval_candidates="cold"`) among the test part's new items only."""
    datamodule = GroupFeatureDataModule(planted_frame(), split="cold_items", batch_size=128, eval_candidates=eval_candidates)
    datamodule.setup("fit")
    torch.manual_seed(0)
    module = build_module(module_config(model=model), datamodule.training_data)
    trainer = quiet_trainer(max_epochs=15, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    return trainer.test(module, datamodule=datamodule, verbose=False)[0]["test/ndcg@10"]


@pytest.mark.slow
def test_features_rank_cold_items_and_ids_alone_cannot():
    """Popularity has nothing to rank items without interactions by (all count 0), nor has plain MF (their
    ids only ever were negatives); the same MF with the items' taste-group feature ranks them."""
    mf = {"_target_": "recsys_lightning.models.MatrixFactorization", "dim": 16}
    popularity = cold_item_ndcg({"_target_": "recsys_lightning.models.Popularity"})
    without = cold_item_ndcg(mf)
    with_features = cold_item_ndcg({**mf, "features": True, "id_dropout": 0.5})
    assert popularity == 0.0
    assert without < 0.05, without
    assert with_features > 0.1, with_features  # 0.21 at seed 0; 0.0 with id_dropout=0


def test_feature_popularity_ranks_cold_items_by_the_users_preferred_features():
    """The content baseline on the planted taste groups, where a user's group is the feature of all their
    items: among the new items it puts the user's group first; among all items the group's trained items,
    which have popularity, come before every new one."""
    model = {"_target_": "recsys_lightning.models.FeaturePopularity", "features": True}
    assert cold_item_ndcg(model, eval_candidates="cold") > 0.5
    assert cold_item_ndcg(model) == 0.0


def test_a_feature_run_serves_from_its_checkpoint_alone(tmp_path):
    """The feature matrix and the cold mask travel in the checkpoint (a sparse buffer and a dense one)."""
    from recsys_lightning.runs.checkpoint_file import find_checkpoint
    from recsys_lightning.runs.trained_run import load_trained

    from helpers import trained_run_folder

    datamodule = GroupFeatureDataModule(planted_frame(), split="cold_items", batch_size=128)
    model = {"_target_": "recsys_lightning.models.MatrixFactorization", "dim": 8, "features": True}
    trained_run_folder(tmp_path, datamodule, module_config(model=model))
    served = load_trained(find_checkpoint(tmp_path)).model
    trained = torch.load(tmp_path / "checkpoints" / "epoch000.ckpt", weights_only=True)["state_dict"]
    assert served.item_features.features._nnz() == trained["model.item_features.features"]._nnz() > 0
    assert served.item_features.trained.sum() < datamodule.num_items  # the held-out items are cold
    fresh = build_module(module_config(model=model), datamodule.training_data).model.eval()
    fresh.load_state_dict({name.removeprefix("model."): value for name, value in trained.items()})
    users = torch.arange(datamodule.num_users)
    torch.testing.assert_close(served.score_all(users), fresh.score_all(users))
