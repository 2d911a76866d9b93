"""A tiny multirun through the real entry point: one folder per run, a summary, failures as rows."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from omegaconf import OmegaConf

from recsys_lightning.sweep import summarise_sweep, to_markdown

from helpers import ROOT

# Every test here runs the training entry point in a subprocess.
pytestmark = pytest.mark.slow


def test_multirun_writes_sorted_summary_with_failed_run_as_row(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys_lightning.train",
            "-m",
            "loss=bpr,bce",
            "sampler=uniform,in_batch",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "callbacks.progress_bar.refresh_rate=0",
            f"paths.output_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-2000:]  # one run cannot work, so the sweep reports failure
    sweep_dir = next(tmp_path.glob("multiruns/*/*"))
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == [
        "000_mf-bpr-uniform_limit_train_batches-3+max_epochs-1",
        "001_mf-bpr-in_batch_limit_train_batches-3+max_epochs-1",
        "002_mf-bce-uniform_limit_train_batches-3+max_epochs-1",
        "003_mf-bce-in_batch_limit_train_batches-3+max_epochs-1",
    ]
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert len(summary) == 4
    finished = summary[summary["error"].isna()]
    assert len(finished) == 3
    assert finished["val/ndcg@10"].is_monotonic_decreasing
    assert (finished["test/ndcg@10"] > 0).all() and (finished["train_seconds"] > 0).all()
    failed = summary[summary["error"].notna()]
    assert failed["run"].tolist() == ["003_mf-bce-in_batch_limit_train_batches-3+max_epochs-1"]
    assert "use sampler=hard or sampler=popularity or sampler=retrieved or sampler=shared_pool or sampler=uniform" in failed["error"].item()
    assert summary.index[summary["error"].notna()].tolist() == [3]  # failures sort last
    assert (sweep_dir / "summary.md").read_text() == to_markdown(summarise_sweep(sweep_dir))
    assert "Sweep summary" in result.stdout
    assert f"--logdir {sweep_dir}   (HParams tab: one row per run)\n" in result.stdout  # one next step, not one per job
    assert result.stdout.count("tensorboard --logdir") == 1


def test_impossible_combination_fails_before_any_data_is_loaded(tmp_path):
    empty_data_dir = tmp_path / "data"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys_lightning.train",
            "loss=bce",
            "sampler=in_batch",
            f"paths.data_dir={empty_data_dir}",
            f"paths.output_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: BCELoss cannot train with InBatchSampler")
    assert not empty_data_dir.exists()


def test_optuna_search_maximises_the_returned_validation_metric(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys_lightning.train",
            "-m",
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            "debug=quick",
            f"paths.output_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    sweep_dir = next(tmp_path.glob("multiruns/*/*"))
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    trial_values = [json.loads(path.read_text())["val/ndcg@10"] for path in sweep_dir.glob("*/metrics.json")]
    assert len(trial_values) == 2
    assert best.best_value == pytest.approx(max(trial_values))
    assert "setup plugin alembic" not in result.stdout + result.stderr  # Optuna's storage layer, silenced
    assert "\x1b[" not in result.stderr  # Optuna's colours, which a log file shows as raw codes
    for job in sweep_dir.glob("0*"):  # e.g. 000_mf-bpr-uniform_debug-quick+l2-0.0002938+dim-64+lr-0.00455+num_negatives-4
        assert len(job.name) < 80 and "+l2-" in job.name and "+lr-" in job.name, job.name
