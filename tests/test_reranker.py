"""A re-ranker trained for its job (recsys_lightning/rerank/): its features, its loss, the training rows a
fold retriever holds out, the refusals of the runs it is built from, and the three commands end to end."""

from __future__ import annotations

import io
import json
import math
import shutil
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
from recsys_lightning.recommend import serve
from recsys_lightning.rerank.build import check_reranker_config
from recsys_lightning.rerank.features import CandidateFeatures, ItemSide, check_feature_names
from recsys_lightning.rerank.lists import candidate_lists, ranked
from recsys_lightning.rerank.ranker import LinearReranker, listwise_loss
from recsys_lightning.rerank.runs import load_fold_retriever, load_retriever
from recsys_lightning.rerank.trained import load_reranker
from recsys_lightning.runs.checkpoint_file import find_checkpoint, load_checkpoint
from recsys_lightning.runs.safe_config import checked_module_hyper_parameters
from recsys_lightning.runs.trained_run import load_trained
from recsys_lightning.serving.reranker import RerankerService, feature_lifts, moved_by
from recsys_lightning.serving.service import RecommendationService
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
        (["retrieval.run_dir=r", "rerank.fold_run_dir=f", "+rerank.holdot=0.25"], r"^rerank.holdot: no such key of a re-ranker run"),
        (
            ["+retrieval.candidate=50", "rerank.fold_run_dir=f"],
            r"^retrieval.candidate: no such key of a re-ranker run; it takes retrieval.run_dir, retrieval.candidates$",
        ),
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


def test_a_rerank_key_added_to_another_models_run_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^rerank.holdout: only a re-ranker's run .* drop it to train model=MatrixFactorization$"):
        check_training_config(compose_config("config", "experiment=ml100k_mf", "+rerank.holdout=0.25"))


def test_a_reranker_on_a_prepared_folder_is_refused_saying_why_in_one_line():
    """It was refused for the preset's data.item_features, a key data=prepared lacks: true, but not the reason."""
    cfg = compose_config("config", "experiment=ml100k_reranker", "data=prepared", "data.path=/prepared")
    with pytest.raises(ConfigError, match=r"^data=prepared: a re-ranker builds every user's candidate lists in one process"):
        check_training_config(cfg)


def test_the_presets_own_keys_are_known_on_the_command_line_only_beside_it():
    check_override_keys(["experiment=ml100k_reranker", "retrieval.run_dir=r", "rerank.holdout=0.25"], "config")
    with pytest.raises(ConfigError, match=r"^rerank.holdout=0.25: no config group or key 'rerank'"):
        check_override_keys(["rerank.holdout=0.25"], "config")


def test_a_reranker_checkpoint_is_refused_by_serving_in_one_line():
    record = {"model": {"_target_": "recsys_lightning.rerank.LinearReranker", "features": ["retriever_z"]}, "num_items": 5}
    with pytest.raises(
        ConfigError,
        match=r"^run.ckpt: a re-ranker.s run .* only with retrieval.run_dir=<the retriever it was trained with>; pair scores",
    ):
        checked_module_hyper_parameters(record, "run.ckpt")


def test_feature_lifts_of_a_hand_made_list_sum_to_the_score_over_the_average_candidate():
    names = ["retriever_z", "ease_z", "year"]
    ranker = LinearReranker(names)
    with torch.no_grad():
        ranker.weights.weight.copy_(torch.tensor([[1.0, 2.0, -0.4]]))
        ranker.weights.bias.fill_(5.0)
    # Three candidates and a padded fourth, whose values must not count in the list's average.
    features = torch.tensor([[[1.0, 0.3, 2.0], [0.0, 0.9, -1.0], [-1.0, 0.0, 2.0], [50.0, 50.0, 50.0]]])
    present = torch.tensor([[True, True, True, False]])
    lifts = feature_lifts(ranker.weights.weight[0], features, present)
    # Averages over the three: retriever_z 0, ease_z 0.4, year 1; lift = weight x (value - average).
    expected = [[1.0, 2 * (0.3 - 0.4), -0.4 * (2 - 1)], [0.0, 2 * (0.9 - 0.4), -0.4 * (-1 - 1)], [-1.0, 2 * (0 - 0.4), -0.4 * (2 - 1)]]
    assert lifts[0, :3].tolist() == [pytest.approx(row) for row in expected]
    scores = ranker(features)[0, :3]  # 5.6, 7.3, 3.4: the bias cancels against the average (5.4333)
    assert lifts[0, :3].sum(-1).tolist() == pytest.approx((scores - scores.mean()).tolist())
    # The retriever's own order is not a reason to move: the two others, largest first, signed.
    assert moved_by(lifts[0, :3], names, count=2) == ["year -0.40, ease_z -0.20", "ease_z +1.00, year +0.80", "ease_z -0.80, year -0.40"]
    assert moved_by(lifts[0, :3, :1], names[:1]) == ["", "", ""]


def _train(*overrides: str) -> dict:
    result = run_module("recsys_lightning.train", "callbacks.progress_bar.refresh_rate=0", "trainer.accelerator=cpu", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def ml100k_runs(tmp_path_factory) -> dict:
    """The three commands of the README on ML-100K, short (MF 2 epochs, the ranker 10): the retriever R, its
    fold F and the re-ranker, trained once for the slow tests of this module; `stdout` is the ranker's."""
    root = tmp_path_factory.mktemp("ml100k_reranker")
    retriever, fold, reranker = root / "R", root / "F", root / "reranker"
    _train("experiment=ml100k_mf", "trainer.max_epochs=2", "projector.max_items=0", f"hydra.run.dir={retriever}")
    _train("experiment=ml100k_mf", "data.rerank_holdout=0.125", "trainer.max_epochs=2", "projector.max_items=0", f"hydra.run.dir={fold}")
    result = _train(
        "experiment=ml100k_reranker",
        f"retrieval.run_dir={retriever}",
        f"rerank.fold_run_dir={fold}",
        "trainer.max_epochs=10",
        f"hydra.run.dir={reranker}",
    )
    return {"R": retriever, "F": fold, "reranker": reranker, "stdout": result.stdout}


@pytest.mark.slow
def test_three_commands_train_a_reranker_on_ml100k(ml100k_runs, tmp_path):
    retriever, reranker = ml100k_runs["R"], ml100k_runs["reranker"]
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
    assert "retriever alone -> two stages, ndcg@10: val" in ml100k_runs["stdout"]
    # The same command with the retriever as its own fold is one line and a non-zero exit.
    refused = run_module(
        "recsys_lightning.train",
        "experiment=ml100k_reranker",
        f"retrieval.run_dir={retriever}",
        f"rerank.fold_run_dir={retriever}",
        f"hydra.run.dir={tmp_path / 'refused'}",
    )
    assert refused.returncode != 0 and "rerank.fold_run_dir is retrieval.run_dir" in refused.stderr


@pytest.mark.slow
def test_recommend_and_evaluate_serve_the_trained_reranker(ml100k_runs):
    retriever, reranker = ml100k_runs["R"], ml100k_runs["reranker"]
    shown = run_module("recsys_lightning.recommend", f"run_dir={reranker}", f"retrieval.run_dir={retriever}", "user_id=1", "k=10")
    assert shown.returncode == 0, shown.stderr[-3000:]
    heading, columns, *rows = shown.stdout.splitlines()
    assert "LinearReranker re-ranking the top 100 of MatrixFactorization" in heading
    assert columns.split() == ["rank", "retrieval_rank", "item_id", "title", "score", "source", "retrieval_score", "moved_by"]
    assert len(rows) == 10 and "ease_z" in shown.stdout
    evaluated = run_module("recsys_lightning.evaluate", f"run_dir={reranker}", f"retrieval.run_dir={retriever}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "all 20 metrics equal metrics.json" in evaluated.stdout and "test/two_stage/ndcg@10" in evaluated.stdout


@pytest.mark.slow
def test_a_served_reranker_answer_is_its_scores_ranks_and_lifts(ml100k_runs):
    reranker = ml100k_runs["reranker"]
    path = find_checkpoint(reranker, "best")
    run = load_reranker(load_checkpoint(path), path, reranker)
    assert run.candidates == 100 and run.ks == [10, 20]
    retrieval = RecommendationService(load_trained(find_checkpoint(ml100k_runs["R"], "best")))
    service = RerankerService(run, retrieval)
    users = torch.arange(5)
    answer, retrieval_ranks, lifts = service.explain(users, 10)
    proposed = retrieval.recommend(users, 100)
    # The retrieval rank points at the item in the retriever's list, whose score is the retrieval score.
    assert torch.equal(proposed.items.gather(1, retrieval_ranks - 1), answer.items)
    assert torch.equal(proposed.scores.gather(1, retrieval_ranks - 1), answer.retrieval_scores)
    # Lifts add up to each item's score minus the user's average candidate's (every list holds 100 items here).
    scores = run.model(run.features(users, proposed.items, proposed.scores))
    assert torch.allclose(answer.scores, scores.gather(1, retrieval_ranks - 1))
    assert torch.allclose(lifts.sum(-1), answer.scores - scores.mean(1, keepdim=True), atol=1e-5)
    assert answer.scores.diff(dim=1).le(0).all()
    # Served as the test loop ranks (train and valid hidden, every user ranked), the answers are the ranking
    # evaluate measures: the test lists built as training built them, ordered by the ranker.
    hidden = ("train", "valid")
    tested = RerankerService(run, RecommendationService(retrieval.run, exclude=hidden, min_history=0), exclude=hidden, min_history=0)
    (part,) = candidate_lists(retrieval.model, run.catalogue.seen_in(["test"]), run.catalogue.seen_in(hidden), run.features, 100, 1024)
    assert torch.equal(tested.recommend(part.users, 10).items, ranked(run.model(part.features), part, 10))


def _refusal(cfg) -> str:
    with pytest.raises(ConfigError) as error:
        serve(cfg, io.StringIO())
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.mark.slow
def test_serving_a_reranker_refuses_a_wrong_retriever_a_tampered_run_and_a_missing_one(ml100k_runs, tmp_path):
    retriever, reranker = ml100k_runs["R"], ml100k_runs["reranker"]
    ask = ("user_id=1", "k=10")
    # The fold retriever holds other training pairs: its candidates are not the ones the ranker was trained on.
    message = _refusal(compose_config("recommend", f"run_dir={reranker}", f"retrieval.run_dir={ml100k_runs['F']}", *ask))
    assert message.startswith(f"retrieval.run_dir={ml100k_runs['F']} was trained on other data or another split")
    assert _refusal(compose_config("recommend", f"run_dir={reranker}", *ask)).startswith(f"run_dir={reranker} is a re-ranker's run")
    missing = tmp_path / "nowhere"
    assert _refusal(compose_config("recommend", f"run_dir={reranker}", f"retrieval.run_dir={missing}", *ask)).startswith(
        "retrieval.run_dir"
    )
    assert _refusal(compose_config("recommend", f"run_dir={missing}", f"retrieval.run_dir={retriever}", *ask)).startswith(
        f"run_dir={missing}"
    )
    tampered = tmp_path / "tampered"
    shutil.copytree(reranker, tampered)
    config = tampered / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("candidates: 100", "candidates: 100000"))
    message = _refusal(compose_config("recommend", f"run_dir={tampered}", f"retrieval.run_dir={retriever}", *ask))
    assert message.startswith(f"{config}: retrieval.candidates is 100000, not an integer in [1, 1682]")
    config.write_text(config.read_text().replace("candidates: 100000", "candidates: 100"))
    path = find_checkpoint(tampered, "best")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["model.weights.weight"] = torch.zeros(1, 100_000)  # weights for more features than recorded
    torch.save(checkpoint, path)
    message = _refusal(compose_config("recommend", f"run_dir={tampered}", f"retrieval.run_dir={retriever}", *ask))
    assert message.startswith(f"{path}: model.weights.weight is (1, 100000), not a float tensor of shape (1, 9)")


@pytest.mark.slow
def test_serving_a_reranker_refuses_an_edited_candidate_count_or_feature_list_and_overflowing_weights(ml100k_runs, tmp_path):
    """The candidate count and feature list of .hydra/config.yaml must be the checkpoint's (the ranker's log_rank
    and z-scores are relative to the list it was trained on); finite weights whose sums overflow are refused
    rather than ranking nothing (a "top 0") or in an arbitrary order."""
    retriever, reranker = ml100k_runs["R"], ml100k_runs["reranker"]
    ask = (f"retrieval.run_dir={retriever}", "user_id=1", "k=10")
    edited = tmp_path / "edited"
    shutil.copytree(reranker, edited)
    config = edited / ".hydra" / "config.yaml"
    original = config.read_text()
    config.write_text(original.replace("candidates: 100", "candidates: 1682"))
    message = _refusal(compose_config("recommend", f"run_dir={edited}", *ask))
    assert message.startswith(f"{config}: retrieval.candidates is 1682, the checkpoint") and "trained on lists of 100" in message
    config.write_text(original.replace("ease_l2: 300.0", "ease_l2: 1.0e+30"))
    message = _refusal(compose_config("recommend", f"run_dir={edited}", *ask))
    assert message.startswith(f"{config}: rerank.ease_l2 is 1e+30, the checkpoint") and "trained with 300.0" in message
    config.write_text(original.replace("  - retriever_gap\n", ""))
    assert "model.features is ['retriever_z', 'log_rank'" in _refusal(compose_config("recommend", f"run_dir={edited}", *ask))
    config.write_text(original)
    path = find_checkpoint(edited, "best")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["model.weights.weight"][0, :2] = torch.tensor([3e38, -3e38])
    torch.save(checkpoint, path)
    assert _refusal(compose_config("recommend", f"run_dir={edited}", *ask)).startswith(f"{path}: its weights give NaN or infinite scores")
    evaluated = run_module("recsys_lightning.evaluate", f"run_dir={edited}", f"retrieval.run_dir={retriever}", "checkpoint=best")
    assert evaluated.returncode != 0 and "its weights give NaN or infinite scores" in evaluated.stderr
    assert "Traceback" not in evaluated.stderr
