"""A re-ranker trained for its job (recsys_lightning/rerank/): its features, its loss, the training rows a
fold retriever holds out, the refusals of the runs it is built from, and the three commands end to end."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys_lightning.config import check_override_keys
from recsys_lightning.data.features import FeatureTable
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.data.split import rerank_holdout
from recsys_lightning.errors import ConfigError
from recsys_lightning.rerank.build import check_reranker_config
from recsys_lightning.rerank.features import CandidateFeatures, ItemSide, check_feature_names
from recsys_lightning.rerank.ranker import LinearReranker, listwise_loss
from recsys_lightning.rerank.runs import load_fold_retriever, load_retriever
from recsys_lightning.runs.safe_config import checked_module_hyper_parameters
from recsys_lightning.validation import check_training_config

from helpers import FrameDataModule, compose_config, module_config, planted_frame, run_module, trained_run_folder

ALL_FEATURES = [
    "retriever_z",
    "retriever_gap",
    "log_rank",
    "log_popularity",
    "log_activity",
    "genre_affinity",
    "year",
    "year_distance",
    "ease_z",
]


def _z(values: list[float]) -> list[float]:
    mean, spread = statistics.mean(values), statistics.stdev(values)
    return [(value - mean) / spread for value in values]


@pytest.fixture
def three_items() -> tuple[CandidateFeatures, ItemSide]:
    """Two users, three items: user 0 holds item 0, user 1 items 0 and 1. Item 0 is Drama of 1990, item 1
    Drama and Comedy of 2000, item 2 Comedy with no year; EASE at l2 = 1."""
    history = UserItemCSR.from_pairs(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2, 3)
    names = ["genre=Comedy", "genre=Drama", "year=1990", "year=2000"]
    table = FeatureTable(names, torch.tensor([0, 2, 5, 6]), torch.tensor([1, 2, 0, 1, 3, 0]))
    side = ItemSide.from_table(table, 3)
    return CandidateFeatures(ALL_FEATURES, history, side, ease_l2=1.0), side


def test_item_side_reads_genres_and_standardizes_known_years(three_items):
    _, side = three_items
    assert side.genres.tolist() == [[0, 1], [1, 1], [1, 0]]
    spread = statistics.stdev([1990, 2000])
    assert side.year.tolist() == pytest.approx([(1990 - 1995) / spread, (2000 - 1995) / spread, 0.0])


def test_ease_scores_of_a_three_item_example_match_the_closed_form_by_hand(three_items):
    features, _ = three_items
    # X^T X + I = [[3, 1, 0], [1, 2, 0], [0, 0, 1]]; its inverse P has the 2x2 block [[2, -1], [-1, 3]] / 5 and
    # P_22 = 1, so B_01 = -P_01 / P_11 = 1/3, B_10 = -P_10 / P_00 = 1/2 and item 2 is tied to nothing.
    scores = features.ease.score_all(torch.tensor([0, 1]))
    assert scores.tolist() == [pytest.approx([0.0, 1 / 3, 0.0]), pytest.approx([1 / 2, 1 / 3, 0.0])]


def test_candidate_features_of_a_hand_made_list(three_items):
    features, side = three_items
    items, scores = torch.tensor([[2, 1, 0]]), torch.tensor([[3.0, 2.0, 0.0]])
    got = dict(zip(ALL_FEATURES, features(torch.tensor([1]), items, scores)[0].T.tolist()))
    assert got["retriever_z"] == pytest.approx(_z([3.0, 2.0, 0.0]))
    assert got["retriever_gap"] == pytest.approx([0.0, -1.0, -3.0])
    assert got["log_rank"] == pytest.approx([0.0, math.log(2), math.log(3)])
    popularity = _z([math.log1p(count) for count in (2, 1, 0)])  # item 0 has 2 users, item 1 one, item 2 none
    assert got["log_popularity"] == pytest.approx([popularity[2], popularity[1], popularity[0]])
    assert got["log_activity"] == pytest.approx([_z([math.log(2), math.log(3)])[1]] * 3)
    # User 1's genres: Drama twice, Comedy once -> shares 1/3 Comedy, 2/3 Drama.
    assert got["genre_affinity"] == pytest.approx([1 / 3, (1 / 3 + 2 / 3) / 2, 2 / 3])
    year = side.year.tolist()
    mean_year = (year[0] + year[1]) / 2
    assert got["year"] == pytest.approx([year[2], year[1], year[0]])
    assert got["year_distance"] == pytest.approx([abs(year[i] - mean_year) for i in (2, 1, 0)])
    assert got["ease_z"] == pytest.approx(_z([0.0, 1 / 3, 1 / 2]))


def test_a_padded_candidate_reads_as_the_lowest_score(three_items):
    features, _ = three_items
    got = features(torch.tensor([0]), torch.tensor([[1, 2]]), torch.tensor([[2.0, -torch.inf]]))
    assert torch.isfinite(got).all()
    assert got[0, 1, ALL_FEATURES.index("retriever_gap")] == 0.0


def test_feature_names_are_checked_against_the_data():
    with pytest.raises(ConfigError, match="'recency' is no re-ranker feature"):
        check_feature_names(["retriever_z", "recency"], None)
    with pytest.raises(ConfigError, match="add genre to data.item_features"):
        check_feature_names(["genre_affinity"], None)


def test_listwise_loss_matches_a_per_user_reference():
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(6, 9, generator=generator)
    scores[2, 7:] = -torch.inf  # a list padded past the user's unseen items
    targets = torch.rand(6, 9, generator=generator) < 0.3
    targets[:, 0] = True
    targets[2, 7:] = False
    expected = []
    for row, positives in zip(scores.tolist(), targets.tolist()):
        total = sum(math.exp(value) for value in row)
        picked = [-math.log(math.exp(value) / total) for value, positive in zip(row, positives) if positive]
        expected.append(sum(picked) / len(picked))
    assert listwise_loss(scores, targets).item() == pytest.approx(sum(expected) / len(expected), rel=1e-5)


def test_linear_reranker_starts_as_the_retriever():
    ranker = LinearReranker(["log_rank", "retriever_z"])
    features = torch.randn(4, 5, 2)
    assert torch.equal(ranker(features), features[..., 1])


def test_holdout_takes_the_share_of_each_users_rows_from_the_seed():
    users = np.repeat(np.arange(50), np.arange(1, 51))  # user u has u + 1 rows
    held = rerank_holdout(users, 0.25, seed=5)
    per_user = np.bincount(users[held], minlength=50)
    counts = np.bincount(users)
    assert per_user.tolist() == np.minimum(np.maximum(1, np.floor(counts * 0.25 + 0.5)), counts - 1).astype(int).tolist()
    assert per_user[0] == 0 and per_user[1] == 1  # a single row is never held out; two give one
    assert np.array_equal(held, rerank_holdout(users, 0.25, seed=5))
    assert not np.array_equal(held, rerank_holdout(users, 0.25, seed=6))
    assert not rerank_holdout(users, 0.0, seed=5).any()


def test_data_rerank_holdout_removes_only_training_rows():
    whole = FrameDataModule(planted_frame(), seed=3)
    fold = FrameDataModule(planted_frame(), seed=3, rerank_holdout=0.125)
    whole.setup("fit")
    fold.setup("fit")
    assert np.array_equal(whole.split.valid, fold.split.valid) and np.array_equal(whole.split.test, fold.split.test)
    held = np.setdiff1d(whole.split.train, fold.split.train)
    assert np.isin(fold.split.train, whole.split.train).all()
    expected = rerank_holdout(whole.interactions.users[whole.split.train], 0.125, 3)
    assert np.array_equal(held, np.sort(whole.split.train[expected]))
    assert 0.1 < len(held) / len(whole.split.train) < 0.15


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Tiny retrievers on planted data: R, F (holdout 0.125), F with another share, R of another seed; and
    this run's data to check them against."""
    root = tmp_path_factory.mktemp("rerank_runs")

    def run(name: str, **data) -> Path:
        return trained_run_folder(root / name, FrameDataModule(planted_frame(), batch_size=256, **data), module_config())

    data = FrameDataModule(planted_frame(), batch_size=256)
    data.setup("fit")
    train_rows = data.split.train
    held = rerank_holdout(data.interactions.users[train_rows], 0.125, data.seed)
    fold_train = UserItemCSR.from_pairs(
        torch.from_numpy(data.interactions.users[train_rows[~held]]),
        torch.from_numpy(data.interactions.items[train_rows[~held]]),
        data.num_users,
        data.num_items,
    )
    return {
        "R": run("R"),
        "F": run("F", rerank_holdout=0.125),
        "F_quarter": run("F_quarter", rerank_holdout=0.25),
        "other_seed": run("other_seed", seed=7),
        "check": (data.training_data.catalogue, data.train_positives, fold_train),
    }


def test_retriever_and_fold_of_this_data_are_accepted(runs):
    catalogue, train, fold_train = runs["check"]
    load_retriever(str(runs["R"]), catalogue, train)
    load_fold_retriever(str(runs["F"]), str(runs["R"]), catalogue, train, fold_train, 0.125)


def test_a_retriever_of_another_seed_is_refused_in_one_line(runs):
    catalogue, train, _ = runs["check"]
    with pytest.raises(ConfigError, match=r"^retrieval.run_dir=.* another seed") as error:
        load_retriever(str(runs["other_seed"]), catalogue, train)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("fold", "message"),
    [
        ("other_seed", r"^rerank.fold_run_dir=.*another seed than this run"),
        ("F_quarter", r"^rerank.fold_run_dir=.*not the ones rerank.holdout=0.125 leaves.*data.rerank_holdout=0.125"),
        ("R", r"^rerank.fold_run_dir is retrieval.run_dir"),
        ("missing", r"^rerank.fold_run_dir: "),
    ],
)
def test_a_wrong_fold_retriever_is_refused_in_one_line(runs, fold, message, tmp_path):
    catalogue, train, fold_train = runs["check"]
    path = runs.get(fold, tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=message) as error:
        load_fold_retriever(str(path), str(runs["R"]), catalogue, train, fold_train, 0.125)
    assert "\n" not in str(error.value)


def test_a_fold_without_holdout_is_refused_naming_the_share(runs):
    catalogue, train, fold_train = runs["check"]
    with pytest.raises(ConfigError, match=r"kept 100.0% of this run's training rows"):
        load_fold_retriever(str(runs["R"]), str(runs["R"]) + "/other", catalogue, train, fold_train, 0.125)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], r"^retrieval.run_dir is not set: train the retriever"),
        (["retrieval.run_dir=r"], r"^rerank.fold_run_dir is not set"),
        (["retrieval.run_dir=r", "rerank.fold_run_dir=f", "data.rerank_holdout=0.125"], r"^data.rerank_holdout=0.125: the re-ranker"),
        (["retrieval.run_dir=r", "rerank.fold_run_dir=f", "rerank.holdout=1.5"], r"^rerank.holdout=1.5: must be a share"),
        (["retrieval.run_dir=r", "rerank.fold_run_dir=f", "retrieval.candidates=5"], r"^retrieval.candidates=5: must be an integer >= max"),
        (["retrieval.run_dir=r", "rerank.fold_run_dir=f", "rerank.ease_l2=0"], r"^rerank.ease_l2=0: must be a number > 0"),
        (["retrieval.run_dir={empty}", "rerank.fold_run_dir=f"], r"^retrieval.run_dir: .*: cannot find the 'best' checkpoint"),
    ],
)
def test_reranker_config_refusals(overrides, message, tmp_path):
    overrides = [override.format(empty=tmp_path) for override in overrides]  # a folder without a run
    with pytest.raises(ConfigError, match=message) as error:
        check_reranker_config(compose_config("config", "experiment=ml100k_reranker", *overrides))
    assert "\n" not in str(error.value)


def test_the_reranker_model_alone_is_refused_naming_its_preset():
    with pytest.raises(ConfigError, match=r"^model=LinearReranker trains on a retriever's candidates: use experiment=ml100k_reranker"):
        check_training_config(compose_config("config", "model=linear_reranker"))


def test_the_presets_own_keys_are_known_on_the_command_line_only_beside_it():
    check_override_keys(["experiment=ml100k_reranker", "retrieval.run_dir=r", "rerank.holdout=0.25"], "config")
    with pytest.raises(ConfigError, match=r"^rerank.holdout=0.25: no config group or key 'rerank'"):
        check_override_keys(["rerank.holdout=0.25"], "config")


def test_a_reranker_checkpoint_is_refused_by_serving_in_one_line():
    record = {"model": {"_target_": "recsys_lightning.rerank.LinearReranker", "features": ["retriever_z"]}, "num_items": 5}
    with pytest.raises(ConfigError, match=r"^run.ckpt: a re-ranker's run .* which evaluate and recommend do not load yet"):
        checked_module_hyper_parameters(record, "run.ckpt")


def _train(*overrides: str) -> dict:
    result = run_module("recsys_lightning.train", "callbacks.progress_bar.refresh_rate=0", "trainer.accelerator=cpu", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_three_commands_train_a_reranker_on_ml100k(tmp_path):
    retriever, fold, reranker = tmp_path / "R", tmp_path / "F", tmp_path / "reranker"
    _train("experiment=ml100k_mf", "trainer.max_epochs=2", "projector.max_items=0", f"hydra.run.dir={retriever}")
    _train("experiment=ml100k_mf", "data.rerank_holdout=0.125", "trainer.max_epochs=2", "projector.max_items=0", f"hydra.run.dir={fold}")
    result = _train(
        "experiment=ml100k_reranker",
        f"retrieval.run_dir={retriever}",
        f"rerank.fold_run_dir={fold}",
        "trainer.max_epochs=10",
        f"hydra.run.dir={reranker}",
    )
    metrics = json.loads((reranker / "metrics.json").read_text())
    for part in ("val", "test"):
        assert 0 < metrics[f"{part}/two_stage/ndcg@10"] <= 1
        assert 0 < metrics[f"{part}/retriever/ndcg@10"] <= 1
    retriever_metrics = json.loads((retriever / "metrics.json").read_text())
    # The retriever's own lists ranked as its test loop ranks: the same figure as its metrics.json.
    assert metrics["test/retriever/ndcg@10"] == pytest.approx(retriever_metrics["test/ndcg@10"], abs=1e-6)
    assert metrics["two_stage_ms_per_1000_users"] > 0 and metrics["retriever_ms_per_1000_users"] > 0
    assert metrics["best_epoch"] in (4, 9)
    assert (reranker / metrics["best_checkpoint"]).is_file()
    assert (reranker / ".hydra" / "config.yaml").is_file()
    assert "retriever alone -> two stages, ndcg@10: val" in result.stdout
    # The same command with the retriever as its own fold is one line and a non-zero exit.
    refused = run_module(
        "recsys_lightning.train",
        "experiment=ml100k_reranker",
        f"retrieval.run_dir={retriever}",
        f"rerank.fold_run_dir={retriever}",
        f"hydra.run.dir={tmp_path / 'refused'}",
    )
    assert refused.returncode != 0 and "rerank.fold_run_dir is retrieval.run_dir" in refused.stderr
