"""Issue 27, item 4: a sweep's summary is written as its jobs start and end, so a stopped sweep keeps one."""

import json

import pandas as pd
import pytest
from omegaconf import OmegaConf

from recsys_lightning.sweep import SweepSummary, summarise_sweep, to_markdown

from helpers import run_module

UNFINISHED = "no metrics.json: the run is running or did not finish"


def job_folder(sweep_dir, name: str, overrides: list[str], metrics: dict | None):
    """A job's folder as Hydra and a run leave it: .hydra/overrides.yaml, and metrics.json once it finished."""
    (sweep_dir / name / ".hydra").mkdir(parents=True)
    (sweep_dir / name / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    if metrics is not None:
        (sweep_dir / name / "metrics.json").write_text(json.dumps(metrics))


def hook_config(sweep_dir, loss: str = "BPRLoss"):
    return OmegaConf.create(
        {"optimized_metric": None, "loss": {"_target_": f"recsys_lightning.losses.{loss}"}, "hydra": {"sweep": {"dir": str(sweep_dir)}}}
    )


def test_each_job_start_and_end_rewrites_the_summary_of_the_jobs_so_far(tmp_path):
    callback = SweepSummary()
    callback.on_multirun_start(hook_config(tmp_path))
    job_folder(tmp_path, "000_a", ["model.dim=8"], {"val/ndcg@10": 0.2})
    job_folder(tmp_path, "001_b", ["model.dim=16"], None)
    callback.on_job_start(hook_config(tmp_path))
    started = pd.read_csv(tmp_path / "summary.csv")
    assert started["run"].tolist() == ["000_a", "001_b"] and started["error"].iloc[1] == UNFINISHED
    (tmp_path / "001_b" / "metrics.json").write_text(json.dumps({"val/ndcg@10": 0.3}))
    callback.on_job_end(hook_config(tmp_path), job_return=None)
    ended = pd.read_csv(tmp_path / "summary.csv")
    assert ended["run"].tolist() == ["001_b", "000_a"] and ended["val/ndcg@10"].tolist() == [0.3, 0.2]
    assert ended["error"].isna().all()
    assert (tmp_path / "summary.md").read_text() == to_markdown(summarise_sweep(tmp_path))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["000_a", "001_b", "summary.csv", "summary.md"]  # no temporary file left


def test_the_order_is_the_sweeps_own_not_the_jobs_loss(tmp_path):
    """A sweep of the default loss over loss=bpr,mse sorts by val/ndcg@10, highest first, in every job's
    summary, as in the final one (the mse job's own config would say val/rmse, lowest first)."""
    callback = SweepSummary()
    callback.on_multirun_start(hook_config(tmp_path, "BPRLoss"))
    job_folder(tmp_path, "000_a", ["loss=bpr"], {"val/ndcg@10": 0.1})
    job_folder(tmp_path, "001_b", ["loss=bce"], {"val/ndcg@10": 0.3})
    callback.on_job_end(hook_config(tmp_path, "MSELoss"), job_return=None)
    assert pd.read_csv(tmp_path / "summary.csv")["run"].tolist() == ["001_b", "000_a"]


def test_a_single_run_writes_no_summary(tmp_path):
    """Hydra calls the job hooks outside a sweep too: nothing started a sweep, so nothing is written."""
    job_folder(tmp_path, "run", [], {"val/ndcg@10": 0.2})
    callback = SweepSummary()
    callback.on_job_start(hook_config(tmp_path))
    callback.on_job_end(hook_config(tmp_path), job_return=None)
    assert not (tmp_path / "summary.csv").exists() and not (tmp_path / "summary.md").exists()


def test_a_summary_that_cannot_be_written_does_not_stop_the_sweep(tmp_path, caplog):
    callback = SweepSummary()
    callback.on_multirun_start(hook_config(tmp_path))
    job_folder(tmp_path, "000_a", [], {"val/ndcg@10": 0.2})
    (tmp_path / "summary.csv").mkdir()  # os.replace cannot put a file there
    callback.on_job_end(hook_config(tmp_path), job_return=None)
    assert "the summary could not be updated" in caplog.text and "the sweep goes on" in caplog.text


@pytest.mark.slow
def test_a_sweep_stopped_in_its_third_job_keeps_a_summary_of_the_two_that_finished(tmp_path):
    """Through the entry point: SIGTERM as job 2 starts training (Hydra's end of the sweep never comes)
    leaves the two finished jobs in the summary, best first, and job 2 as a row that did not finish."""
    sweep_dir = tmp_path / "sweep"
    stopped = run_module(
        "recsys_lightning.train",
        "-m",
        "data=synthetic",
        "data.num_users=300",
        "data.num_items=200",
        "data.num_interactions=6000",
        "data.batch_size=512",
        "trainer.max_epochs=1",
        "callbacks.progress_bar.refresh_rate=0",
        "projector.max_items=0",
        "~logger",
        "model.dim=8,16,32",
        "+callbacks.term._target_=test_trust_sweep.TermOnce",
        "+callbacks.term.job=2",
        "+callbacks.term.epoch=0",
        f"hydra.sweep.dir={sweep_dir}",
        fault_injection=True,
    )
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "Sweep summary" not in stopped.stdout
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert sorted(run[:3] for run in summary["run"][:2]) == ["000", "001"] and summary["run"][2].startswith("002_")
    finished = summary.iloc[:2]
    assert finished["error"].isna().all() and (finished["val/ndcg@10"] > 0).all() and finished["val/ndcg@10"].is_monotonic_decreasing
    assert summary["error"].iloc[2] == UNFINISHED
    assert (sweep_dir / "summary.md").read_text() == to_markdown(summarise_sweep(sweep_dir))
