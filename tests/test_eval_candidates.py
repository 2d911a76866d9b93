"""eval.candidates=cold: validation and test rank only their part's new items, checked against a ranking
written per user in Python, by hand, end to end on ML-100K, and refused where no item is new."""

from __future__ import annotations

import json
import math

import pytest
import torch

from recsys_lightning.build import build_module
from recsys_lightning.console import run_summary
from recsys_lightning.data.batches import RankingChunk
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.errors import ConfigError
from recsys_lightning.evaluate import ranking
from recsys_lightning.hparams_tab import hparams_row
from recsys_lightning.metrics import PointwiseMetrics, RankingMetrics
from recsys_lightning.ranking import top_k_unseen
from recsys_lightning.validation import check_training_config

from helpers import FrameDataModule, module_config, quiet_trainer, random_interactions, run_module, training_config

K = 10


def items_of(csr: UserItemCSR, user: int) -> set[int]:
    return set(csr.indices[csr.indptr[user] : csr.indptr[user + 1]].tolist())


def reference_metrics(scores: torch.Tensor, heldout: UserItemCSR, seen: UserItemCSR, train: UserItemCSR) -> dict[str, float]:
    """NDCG@K and recall@K, averaged over the users with held-out items, of ranking for each user, in
    Python, only the items `heldout` holds that no user trained on, less the user's `seen` items."""
    new_items = {item for user in range(heldout.num_users) for item in items_of(heldout, user)}
    new_items -= {item for user in range(train.num_users) for item in items_of(train, user)}
    ndcgs, recalls = [], []
    for user in range(heldout.num_users):
        relevant = items_of(heldout, user)
        if not relevant:
            continue
        ranked = sorted(new_items - items_of(seen, user), key=lambda item: -scores[user, item].item())[:K]
        dcg = sum(1 / math.log2(rank + 2) for rank, item in enumerate(ranked) if item in relevant)
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(K, len(relevant))))
        ndcgs.append(dcg / ideal)
        recalls.append(sum(item in relevant for item in ranked) / len(relevant))
    return {"ndcg": sum(ndcgs) / len(ndcgs), "recall": sum(recalls) / len(recalls)}


@pytest.mark.parametrize("seed", [0, 1])
def test_cold_ranking_equals_ranking_each_user_over_the_new_items_alone(seed):
    """Random data, a randomly initialised MF, several evaluation chunks: validation and test figures are
    those of ranking, user by user, only the part's new items (the valid part's, the test part's)."""
    frame = random_interactions(num_users=50, num_items=90, per_user=20, seed=seed)
    datamodule = FrameDataModule(frame, split="cold_items", split_ratios=[0.6, 0.2, 0.2], eval_candidates="cold", eval_chunk_size=7)
    datamodule.setup("fit")
    torch.manual_seed(seed)
    module = build_module(module_config(), datamodule.training_data)
    trainer = quiet_trainer()
    trainer.validate(module, datamodule=datamodule, verbose=False)
    figures = {name: value.item() for name, value in trainer.callback_metrics.items()}  # as train.py reads validation's
    figures |= trainer.test(module, datamodule=datamodule, verbose=False)[0]
    with torch.no_grad():
        scores = module.model.score_all(torch.arange(datamodule.num_users))
    train, valid, test = datamodule.train_positives, datamodule.valid_positives, datamodule.test_positives
    expected = {"val": reference_metrics(scores, valid, train, train), "test": reference_metrics(scores, test, train.union(valid), train)}
    for stage, values in expected.items():
        for name, value in values.items():
            assert figures[f"{stage}/{name}@{K}"] == pytest.approx(value, abs=1e-6), (stage, name)
    assert expected["val"]["ndcg"] > 0 and expected["test"]["ndcg"] > 0  # some hits: the comparison says something


def test_a_k_beyond_the_candidates_counts_only_candidates_in_coverage_and_novelty():
    """With eval.ks above the part's new items (12 here, K=30), the top K ends in hidden items (-inf: not
    candidates, or seen): they were never recommended, so coverage and novelty count only the candidates."""
    frame = random_interactions(num_users=40, num_items=60, per_user=15, seed=0)
    datamodule = FrameDataModule(frame, split="cold_items", split_ratios=[0.6, 0.2, 0.2], eval_candidates="cold")
    datamodule.setup("fit")
    candidates = datamodule.candidate_items("test")
    assert 0 < candidates.sum() < 30
    module = build_module(module_config(eval={"ks": [30]}), datamodule.training_data)
    figures = quiet_trainer().test(module, datamodule=datamodule, verbose=False)[0]
    assert figures["test/coverage@30"] == pytest.approx(candidates.sum().item() / 60)  # every candidate, nothing else
    users = datamodule.training_data.num_users
    information = -torch.log2(datamodule.train_positives.counts_per_item().clamp(min=1) / users)
    assert figures["test/novelty@30"] == pytest.approx(information[candidates].mean().item(), abs=1e-5)  # every user's whole list


def test_candidates_are_each_parts_new_items():
    datamodule = FrameDataModule(random_interactions(40, 60, 15), split="cold_items", eval_candidates="cold")
    datamodule.setup("fit")
    trained = datamodule.train_positives.counts_per_item() > 0
    for part, heldout in (("valid", datamodule.valid_positives), ("test", datamodule.test_positives)):
        candidates = datamodule.candidate_items(part)
        assert torch.equal(candidates, (heldout.counts_per_item() > 0) & ~trained)
        assert all(torch.equal(chunk.candidates, candidates) for chunk in datamodule.ranking_chunks(part).chunks)
    assert datamodule.ranking_chunks("valid")[0].candidates.sum() > 0
    every = FrameDataModule(random_interactions(40, 60, 15), split="cold_items")
    every.setup("fit")
    assert every.candidate_items("valid") is None and every.ranking_chunks("test")[0].candidates is None


def test_a_hand_ranked_chunk_ranks_only_its_candidates():
    """Items 1-3 are the candidates; user 0 has seen item 2. Scores 0.9 and 0.7 (items 0 and 4) would win
    a full ranking; among the candidates user 0 gets [3, 1] and user 1 [2, 3]. User 0's held-out item 1 is a
    hit at rank 2 (NDCG@2 1/log2(3) = 0.6309, recall 1); user 1's item 1 is missed (0)."""
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7], [0.9, 0.1, 0.5, 0.3, 0.7]])
    candidates = torch.tensor([False, True, True, True, False])
    top = top_k_unseen(scores.clone(), torch.tensor([0]), torch.tensor([2]), 2, candidates)
    assert top.tolist() == [[3, 1], [2, 3]]
    chunk = RankingChunk(
        users=torch.tensor([0, 1]),
        exclude_rows=torch.tensor([0]),
        exclude_items=torch.tensor([2]),
        heldout_rows=torch.tensor([0, 1]),
        heldout_items=torch.tensor([1, 1]),
        heldout_ratings=torch.ones(2),
        candidates=candidates,
    )
    metrics = RankingMetrics([2])
    metrics.update_ranked(top_k_unseen(scores.clone(), chunk.exclude_rows, chunk.exclude_items, 2, chunk.candidates), chunk, 5)
    computed = metrics.compute()
    assert computed["ndcg@2"].item() == pytest.approx((1 / math.log2(3) + 0) / 2)
    assert computed["recall@2"].item() == pytest.approx(0.5)
    assert top_k_unseen(scores.clone(), torch.tensor([0]), torch.tensor([2]), 2).tolist() == [[0, 4], [0, 4]]  # no candidates: all items


def test_pointwise_negatives_are_drawn_among_the_candidates():
    """AUC pairs each held-out item with a negative: a candidate too, unless the user holds out all of them."""
    candidates = torch.zeros(50, dtype=torch.bool)
    candidates[[3, 7, 11, 20]] = True
    chunk = RankingChunk(
        users=torch.tensor([0, 1]),
        exclude_rows=torch.tensor([0]),
        exclude_items=torch.tensor([20]),
        heldout_rows=torch.tensor([0, 0, 1, 1, 1, 1]),
        heldout_items=torch.tensor([3, 7, 3, 7, 11, 20]),
        heldout_ratings=torch.ones(6),
        candidates=candidates,
    )
    for seed in range(20):
        rows, _, negatives = PointwiseMetrics.pairs_of(chunk, seed, 50)
        assert set(negatives[rows == 0].tolist()) == {11}  # user 0's only candidate neither seen nor held out
        assert not set(negatives[rows == 1].tolist()) & {3, 7, 11, 20}  # user 1 holds out every candidate


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            [],
            "eval.candidates=cold ranks only items held out of training, and data.split=ratio holds none out: "
            "set data.split=cold_items, or eval.candidates=all",
        ),
        (
            ["data.split=leave_one_out"],
            "eval.candidates=cold ranks only items held out of training, and data.split=leave_one_out holds none out: "
            "set data.split=cold_items, or eval.candidates=all",
        ),
        (
            ["data=csv", "data.path=null", "data.train_path=a.csv", "data.valid_path=b.csv", "data.split=cold_items"],
            "eval.candidates=cold with pre-split files (data.train_path): their held-out items absent from train are left out, "
            "so none is new; use data.path with data.split=cold_items, or eval.candidates=all",
        ),
        (
            ["trainer=sharded", "data.split=cold_items"],
            "eval.candidates=cold is not implemented with trainer=sharded; train in one process, or eval.candidates=all",
        ),
    ],
    ids=["ratio", "leave_one_out", "pre-split", "sharded"],
)
def test_cold_candidates_are_refused_up_front_where_no_item_is_new(overrides, message):
    with pytest.raises(ConfigError) as caught:
        check_training_config(training_config("eval.candidates=cold", *overrides))
    assert str(caught.value) == message


def test_cold_candidates_with_cold_items_and_other_values_are_checked():
    check_training_config(training_config("eval.candidates=cold", "data.split=cold_items"))
    check_training_config(training_config("data=prepared", "data.path=.", "model.features=false"))  # no data.eval_candidates
    with pytest.raises(ConfigError, match="eval.candidates"):
        check_training_config(training_config("eval.candidates=new"))
    with pytest.raises(ConfigError) as caught:  # the data's copy is set from eval.candidates, never by itself
        check_training_config(training_config("data.eval_candidates=cold", "data.split=cold_items"))
    assert str(caught.value) == "data.eval_candidates=cold differs from eval.candidates=all: set eval.candidates, which it follows"


def test_a_data_module_asked_for_cold_candidates_without_cold_items_refuses():
    with pytest.raises(ConfigError) as caught:
        FrameDataModule(random_interactions(10, 20, 5), split="ratio", eval_candidates="cold")
    assert str(caught.value) == "data.eval_candidates=cold ranks only items held out of training: it needs data.split=cold_items, not ratio"


def test_evaluate_ranks_other_candidates_only_where_the_run_split_items_out():
    cold_items = {"_target_": "x", "split": "cold_items", "eval_candidates": "all"}
    assert ranking(cold_items, "cold", "run")["eval_candidates"] == "cold"
    assert ranking(cold_items, None, "run") == cold_items  # as the run ranked
    assert ranking({"_target_": "prepared"}, "all", "run") == {"_target_": "prepared"}  # takes no such key, ranks all
    with pytest.raises(ConfigError) as caught:
        ranking({"_target_": "x", "split": "ratio"}, "cold", "runs/a")
    assert str(caught.value) == (
        "candidates=cold ranks only items held out of training, and runs/a split with data.split=ratio: use candidates=all"
    )


def test_evaluate_refuses_a_recorded_cold_ranking_on_a_split_without_new_items_naming_the_file():
    """A run folder's .hydra/config.yaml is untrusted: eval_candidates edited to cold on a ratio split is refused
    in one line naming the file, not left to the DataModule (whose error Hydra wraps in several lines)."""
    edited = {"_target_": "x", "split": "ratio", "eval_candidates": "cold"}
    with pytest.raises(ConfigError) as caught:
        ranking(edited, None, "runs/a")
    assert str(caught.value) == (
        "runs/a/.hydra/config.yaml: data.eval_candidates=cold ranks only items held out of training, and the run split "
        "with data.split=ratio: the file was edited; restore it, or pass candidates=all"
    )
    assert ranking(edited, "all", "runs/a")["eval_candidates"] == "all"  # ranking all instead is still possible


def test_the_closing_table_and_the_hparams_row_say_which_items_were_ranked():
    figures = {"val/ndcg@10": 0.2, "test/ndcg@10": 0.1, "best_epoch": 0, "epochs": 1, "train_seconds": 1.0}
    line = "ranked: each part's new items only (eval.candidates=cold), not the whole catalogue"
    assert line in run_summary({**figures, "eval_candidates": "cold"}, "val/ndcg@10", [10], ".", tensorboard=False).splitlines()
    assert "ranked:" not in run_summary({**figures, "eval_candidates": "all"}, "val/ndcg@10", [10], ".", tensorboard=False)
    assert hparams_row(training_config("eval.candidates=cold", "data.split=cold_items"), {})["eval.candidates"] == "cold"


@pytest.mark.slow
def test_cold_items_on_movielens_rank_the_new_movies_and_say_so(tmp_path):
    """Two epochs of experiment=ml100k_cold_items ranking each part's 168 new movies: far above a random
    ranking of them (valid NDCG@10 0.084, bench/bench_cold_candidates.py); metrics.json and the closing table
    say what was ranked, and evaluate ranks the same items again."""
    result = run_module(
        "recsys_lightning.train",
        "experiment=ml100k_cold_items",
        "eval.candidates=cold",
        "trainer.max_epochs=2",
        "callbacks.progress_bar.refresh_rate=0",
        "projector.max_items=0",
        "~logger",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["eval_candidates"] == "cold"
    assert metrics["val/ndcg@10"] > 0.1 and metrics["test/ndcg@10"] > 0.1, metrics
    assert "ranked: each part's new items only (eval.candidates=cold), not the whole catalogue" in result.stdout
    assert "valid ranks only its 168 new items (of 1682)" in result.stdout + result.stderr
    evaluated = run_module("recsys_lightning.evaluate", f"run_dir={tmp_path}", "accelerator=cpu")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "all 14 metrics equal metrics.json" in evaluated.stdout
