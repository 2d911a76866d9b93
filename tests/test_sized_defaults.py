"""Defaults that follow the data: batch size and patience from the training pairs, and a closing table
that says when a run learnt less than the most popular items (issue 27, item 2)."""

import json
import logging

import pytest

from recsys_lightning.baseline_note import closing_note, compared_with_popularity, popularity_on_validation
from recsys_lightning.build import build_module
from recsys_lightning.data.sized_defaults import auto_batch_size, auto_patience
from recsys_lightning.data.synthetic import generate_interactions

from helpers import FrameDataModule, module_config, planted_frame, quiet_trainer, run_module


def test_auto_batch_size_gives_small_data_ten_steps_and_keeps_4096_for_movielens():
    assert auto_batch_size(79_619) == 4096  # ML-100K's training pairs: the main job is unchanged
    assert auto_batch_size(10 * 4096) == 4096
    assert auto_batch_size(10 * 4096 - 1) == 2048
    assert auto_batch_size(4_925) == 256  # the CSV: 20 steps per epoch instead of 2
    assert auto_batch_size(100) == 32  # no smaller than 32


def test_auto_patience_waits_a_hundred_steps_and_ten_validations_and_about_ten_thousand_steps_on_large_data():
    assert auto_patience(20) == 10  # ML-100K at batch 4096
    assert auto_patience(10) == 10  # the ratings preset (batch 8192)
    assert auto_patience(2) == 50  # batch 4096 on a 5,000-pair CSV: 100 steps, not 20
    assert auto_patience(0) == 100
    assert auto_patience(195) == 10  # ML-1M at batch 4096: 1,950 steps
    assert auto_patience(1000) == 10  # 10,000 steps: still ten validations
    assert auto_patience(1001) == 10  # 10,010 steps: ceil(10,000 / 1,001) = 10
    assert auto_patience(2000) == 5  # ML-10M-sized
    assert auto_patience(3907) == 3  # the README's 20M synthetic example: 3 epochs of 16M pairs, not 10
    assert auto_patience(100_000) == 3  # never fewer than 3 validations


def test_the_datamodule_chooses_and_logs_an_auto_batch_size_and_keeps_an_explicit_one(caplog):
    with caplog.at_level(logging.INFO, logger="recsys_lightning.data.datamodule"):
        datamodule = FrameDataModule(planted_frame(), batch_size="auto")
        datamodule.setup("fit")
    pairs = len(datamodule.split.train)
    assert (pairs, datamodule.batch_size, datamodule.steps_per_epoch) == (960, 64, 15)
    assert "batch size 64 (auto: 960 training pairs)" in caplog.text
    explicit = FrameDataModule(planted_frame(), batch_size=500)
    explicit.setup("fit")
    assert (explicit.batch_size, explicit.steps_per_epoch) == (500, 2)


def test_popularity_on_validation_equals_model_popularity_validated():
    datamodule = FrameDataModule(planted_frame())
    datamodule.setup("fit")
    counted = popularity_on_validation(datamodule, [10])
    module = build_module(module_config(model={"_target_": "recsys_lightning.models.Popularity"}), datamodule.training_data)
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    evaluator = quiet_trainer()
    evaluator.validate(module, datamodule=datamodule, verbose=False)
    validated = {name: value.item() for name, value in evaluator.callback_metrics.items()}
    assert counted["val/ndcg@10"] == pytest.approx(validated["val/ndcg@10"], abs=1e-6), validated
    assert counted["val/recall@10"] == pytest.approx(validated["val/recall@10"], abs=1e-6)
    assert counted["val/ndcg@10"] == pytest.approx(0.05658, abs=1e-5)


def test_the_closing_note_names_a_run_below_popularity_or_stuck_at_its_first_epoch():
    datamodule = FrameDataModule(planted_frame())
    datamodule.setup("fit")
    baseline = popularity_on_validation(datamodule, [10])["val/ndcg@10"]
    below = {"val/ndcg@10": baseline - 0.01, "best_epoch": 4, "epochs": 10}
    note = closing_note(below, "val/ndcg@10", baseline, datamodule.batch_size)
    assert note.startswith(f"note: val/ndcg@10 {baseline - 0.01:.4f} is below the most popular items' {baseline:.4f}")
    assert "data.batch_size (now 4096)" in note
    assert closing_note(below, "val/ndcg@10", None, 4096) is None  # not compared: popularity itself, or a rating monitor
    stuck = {"val/ndcg@10": baseline + 0.1, "best_epoch": 0, "epochs": 11}
    assert closing_note(stuck, "val/ndcg@10", baseline, 4096).startswith("note: no epoch after the first improved val/ndcg@10")
    assert closing_note({**stuck, "best_epoch": 3}, "val/ndcg@10", baseline, 4096) is None
    closed_form = {"val/ndcg@10": baseline, "best_epoch": 0, "epochs": 1}  # one fit, one epoch: nothing to improve on
    assert closing_note(closed_form, "val/ndcg@10", baseline, 4096) is None
    fitted = closing_note({**below, "best_epoch": 0, "epochs": 1}, "val/ndcg@10", baseline, 4096, closed_form=True)
    assert fitted.startswith(f"note: val/ndcg@10 {baseline - 0.01:.4f} is below the most popular items' {baseline:.4f}")
    assert fitted.endswith("a model fitted in closed form: no epoch count, batch size or learning rate changes it; try its own model keys")


def test_only_a_ranking_monitor_of_a_model_other_than_popularity_over_all_items_is_compared_with_popularity():
    assert compared_with_popularity("val/ndcg@10", is_popularity=False)
    assert compared_with_popularity("val/recall@20", is_popularity=False)
    assert not compared_with_popularity("val/ndcg@10", is_popularity=True)
    assert not compared_with_popularity("val/rmse", is_popularity=False)
    assert not compared_with_popularity("train/loss", is_popularity=False)
    assert not compared_with_popularity("val/ndcg@10", is_popularity=False, eval_candidates="cold")  # new items: popularity 0


def small_csv(path):
    """The issue's shape: 200 users, 300 items, 6,156 distinct pairs, drawn by the synthetic generator."""
    frame = generate_interactions(200, 300, 6_156, seed=27).rename(columns={"user_id": "userId", "item_id": "itemId"})
    frame[["userId", "itemId", "timestamp"]].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def small_csv_runs(tmp_path_factory):
    """The small CSV trained through the entry point: with the defaults, as model=popularity, and with
    the old fixed batch of 4096 (two steps per epoch) for three epochs."""
    root = tmp_path_factory.mktemp("small_csv")
    path = small_csv(root / "interactions.csv")
    runs = {}
    for name, overrides in {
        "defaults": [],
        "popularity": ["model=popularity"],
        "batch_4096": ["data.batch_size=4096", "trainer.max_epochs=3"],
    }.items():
        output_dir = root / name
        result = run_module("recsys_lightning.train", "data=csv", f"data.path={path}", f"paths.output_dir={output_dir}", *overrides)
        assert result.returncode == 0, result.stderr[-3000:]
        (metrics_file,) = output_dir.glob("runs/*/*/metrics.json")
        runs[name] = (json.loads(metrics_file.read_text()), result.stdout)
    return runs


@pytest.mark.slow
def test_small_csv_defaults_beat_popularity(small_csv_runs):
    metrics, stdout = small_csv_runs["defaults"]
    popularity, _ = small_csv_runs["popularity"]
    assert "batch size 256 (auto: 4,927 training pairs)" in stdout
    assert "early stopping patience 10 validations (auto: 20 training steps between validations)" in stdout
    assert (metrics["test/ndcg@10"], popularity["test/ndcg@10"]) == pytest.approx((0.4664, 0.0982), abs=1e-4)
    assert metrics["best_epoch"] == 27 and "note:" not in stdout


@pytest.mark.slow
def test_a_run_below_popularity_says_so_in_its_closing_table(small_csv_runs):
    metrics, stdout = small_csv_runs["batch_4096"]
    assert "early stopping patience 50 validations (auto: 2 training steps between validations)" in stdout
    table = stdout[stdout.index("best epoch") :].splitlines()
    assert table[0].startswith(f"best epoch {metrics['best_epoch']} of 3")
    assert table[1] == (
        "note: val/ndcg@10 0.0303 is below the most popular items' 0.0758 on the same users; try more epochs "
        "(trainer.max_epochs), a smaller data.batch_size (now 4096) or another optimizer.lr"
    ), table
