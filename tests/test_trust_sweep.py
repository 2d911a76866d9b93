"""Issue 21, defects 9 and 10: every run that exits 0 leaves a best checkpoint serving can use, however
training ends; a killed sweep resumes as a whole with the command it printed."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recsys_lightning.errors import ConfigError
from recsys_lightning.runs.checkpoint_file import find_checkpoint
from recsys_lightning.runs.resume_command import check_sweep_resume, command_line
from recsys_lightning.runs.trained_run import load_trained
from recsys_lightning.train import train as run_training
from recsys_lightning.validation import check_training_config

from helpers import ROOT, SMALL_RUN, run_module, training_config

RUN = [*SMALL_RUN, "~logger"]  # 10 training batches per epoch; no TensorBoard events, which nothing here reads


class SleepAt(pl.Callback):
    """Sleeps `seconds` at the start of one batch, so trainer.max_time runs out there."""

    def __init__(self, epoch: int, batch: int, seconds: float) -> None:
        self.epoch, self.batch, self.seconds = epoch, batch, seconds

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            time.sleep(self.seconds)


class TermOnce(pl.Callback):
    """SIGTERM at the start of `epoch` (of sweep job `job` only, if given), the first time only: a marker in
    the run's folder remembers, so the same command line, resumed, runs through."""

    def __init__(self, epoch: int = 1, job: int | None = None) -> None:
        self.epoch, self.job = epoch, job

    def on_train_epoch_start(self, trainer, module) -> None:
        marker = Path(trainer.default_root_dir) / "terminated-once"
        in_job = self.job is None or HydraConfig.get().job.num == self.job
        if in_job and trainer.current_epoch == self.epoch and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGTERM)


def checkpoint_steps(run_dir) -> dict[str, tuple[int, int]]:
    """(epoch, global step) of each checkpoint file in the run."""
    loaded = {path.name: torch.load(path, weights_only=True) for path in (run_dir / "checkpoints").glob("*.ckpt")}
    return {name: (checkpoint["epoch"], checkpoint["global_step"]) for name, checkpoint in loaded.items()}


# -- defect 9: a run that exits 0 ends with a checkpoint ------------------------------------------------


@pytest.mark.slow
def test_validating_every_2_epochs_of_3_checkpoints_the_last_one_also_in_a_run_resumed_with_the_printed_command(tmp_path):
    """Stopped by SIGTERM at the start of epoch 2, resumed by pasting the command it printed: the resumed
    run validates and checkpoints its last epoch, which check_val_every_n_epoch=2 would skip."""
    run_dir = tmp_path / "run"
    overrides = [*RUN, "trainer.check_val_every_n_epoch=2", "trainer.max_epochs=3"]
    term = ["+callbacks.term._target_=test_trust_sweep.TermOnce", "+callbacks.term.epoch=2"]
    stopped = run_module("recsys_lightning.train", *overrides, *term, f"hydra.run.dir={run_dir}", fault_injection=True)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    (line,) = error_lines(stopped)
    assert line.startswith("error: stopped by SIGTERM at epoch 2; ")
    assert checkpoint_steps(run_dir)["last.ckpt"] == (1, 20)
    command = line.split("holds the last finished epoch: resume with: ", 1)[1]
    assert command.endswith(f"hydra.run.dir={run_dir} ckpt_path=last")

    resumed = paste(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_checkpoint"] == "checkpoints/epoch002.ckpt" and metrics["epochs"] == 3
    assert checkpoint_steps(run_dir) == {"epoch002.ckpt": (2, 30), "last.ckpt": (2, 30)}
    for which in ("best", "last"):  # what recommend and evaluate serve
        assert load_trained(find_checkpoint(run_dir, which)).catalogue.num_items == 200


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, checkpoints",
    [
        # validated at epochs 2 and 5 as asked, and at the last epoch, 6
        (["trainer.check_val_every_n_epoch=3", "trainer.max_epochs=7"], {"last.ckpt": (6, 70)}),
        # max_steps ends training in the middle of epoch 1, between validations
        (["trainer.check_val_every_n_epoch=5", "+trainer.max_steps=14"], {"epoch001.ckpt": (1, 14), "last.ckpt": (1, 14)}),
        # max_time runs out at batch 3 of epoch 0
        (
            ["trainer.check_val_every_n_epoch=5", "+trainer.max_time=00:00:00:01", "+callbacks.sleep._target_=test_trust_sweep.SleepAt"]
            + ["+callbacks.sleep.epoch=0", "+callbacks.sleep.batch=2", "+callbacks.sleep.seconds=1.2"],
            {"epoch000.ckpt": (0, 3), "last.ckpt": (0, 3)},
        ),
        # validating twice an epoch, every 5th epoch, for 2 epochs
        (
            ["+trainer.val_check_interval=0.5", "trainer.check_val_every_n_epoch=5", "trainer.max_epochs=2"],
            {"epoch001.ckpt": (1, 20), "last.ckpt": (1, 20)},
        ),
        # a closed-form model stops after its one fitting step
        (["model=ease", "trainer.check_val_every_n_epoch=5"], {"epoch000.ckpt": (0, 1), "last.ckpt": (0, 1)}),
    ],
    ids=["max_epochs-between-validations", "max_steps-mid-epoch", "max_time", "val_check_interval", "closed-form"],
)
def test_whatever_ends_training_the_last_step_is_validated_and_checkpointed(tmp_path, overrides, checkpoints):
    run_dir = tmp_path / "run"
    metrics = run_training(training_config(*RUN, "trainer.max_epochs=20", *overrides, run_dir=run_dir))
    found = checkpoint_steps(run_dir)
    assert {name: found[name] for name in checkpoints} == checkpoints
    assert (run_dir / metrics["best_checkpoint"]).is_file() and find_checkpoint(run_dir, "last").is_file()


@pytest.mark.slow
def test_a_run_stopped_before_its_first_step_fails_instead_of_writing_metrics_without_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as refused:
        run_training(training_config(*RUN, "+trainer.max_time=00:00:00:00", run_dir=run_dir))
    assert str(refused.value) == (
        "training ended at epoch 0, step 0, before any validation, so no checkpoint was written to test or serve; "
        "give it more time or steps (trainer.max_time, trainer.max_steps)"
    )
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("+trainer.fast_dev_run=true", "trainer.fast_dev_run writes no checkpoint to test or serve; try a setup with debug=quick instead"),
        ("+trainer.enable_checkpointing=false", "trainer.enable_checkpointing=false leaves no checkpoint to test or serve; drop it"),
        (
            "+callbacks.model_checkpoint.every_n_epochs=3",
            "callbacks.model_checkpoint.every_n_epochs=3: checkpoints are written at every validation, so the best is picked "
            "over all of them; drop it, and set how often to validate with trainer.check_val_every_n_epoch",
        ),
        ("+callbacks.last_checkpoint.every_n_train_steps=100", "callbacks.last_checkpoint.every_n_train_steps=100: checkpoints are"),
        ("+callbacks.last_checkpoint.train_time_interval=60", "callbacks.last_checkpoint.train_time_interval=60: checkpoints are"),
        (
            "+callbacks.last_checkpoint.every_n_train_steps=0",
            "callbacks.last_checkpoint.every_n_train_steps=0: checkpoints are written at every validation",
        ),
        ("callbacks.model_checkpoint.save_top_k=0", "callbacks.model_checkpoint.save_top_k=0 keeps no best checkpoint to test or serve"),
        ("trainer.limit_val_batches=0", "trainer.limit_val_batches=0: must be an integer >= 1 or a number in (0, 1] or null"),
        ("trainer.limit_val_batches=0.0", "trainer.limit_val_batches=0.0: must be"),
    ],
)
def test_a_setting_that_would_leave_no_best_checkpoint_is_refused_up_front(override, message):
    with pytest.raises(ConfigError) as refused:
        check_training_config(training_config(override))
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize("unset", ["+callbacks.model_checkpoint.every_n_epochs=1", "+callbacks.last_checkpoint.every_n_epochs=1"])
def test_checkpoint_schedules_that_follow_validation_are_accepted(unset):
    """every_n_epochs=1 is validation's own schedule; every_n_train_steps=0 is refused (Lightning then reads every_n_epochs as 0)."""
    key, value = unset.lstrip("+").split("=")
    cfg = training_config(unset)
    assert OmegaConf.select(cfg, key) == int(value)  # the schedule is set, and checked...
    check_training_config(cfg)  # ...and taken (a ConfigError otherwise)
    callback = instantiate(cfg.callbacks[key.split(".")[1]])
    assert (callback._every_n_epochs, callback._every_n_train_steps) == (1, 0)  # what Lightning does with neither set


def test_advice_on_a_missing_checkpoint_names_only_a_checkpoint_the_run_holds(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError) as refused:
        find_checkpoint(run_dir, "last")
    assert str(refused.value).endswith("the run holds no checkpoint (it was stopped before its first validation): train it again")
    (run_dir / "checkpoints" / "epoch003.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError) as refused:
        find_checkpoint(run_dir, "last")
    advised = str(refused.value).rsplit("pass checkpoint=", 1)[1]
    assert advised == str(run_dir / "checkpoints" / "epoch003.ckpt") and find_checkpoint(run_dir, advised).is_file()


# -- defect 10: a stopped sweep resumes as a whole with the command it printed ---------------------------

SWEEP = ["-m", *RUN, "trainer.max_epochs=3", "model.dim=8,16,32"]
TERM_JOB_1 = ["+callbacks.term._target_=test_trust_sweep.TermOnce", "+callbacks.term.job=1"]


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def paste(command: str) -> subprocess.CompletedProcess:
    """Run a printed command as a user pastes it into a shell at the project root."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(ROOT / "tests")}
    return subprocess.run(shlex.split(command), cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.slow
def test_a_sweep_stopped_by_sigterm_resumes_as_a_whole_with_the_printed_command(tmp_path):
    sweep_dir = tmp_path / "sweep"
    stopped = run_module("recsys_lightning.train", *SWEEP, *TERM_JOB_1, f"hydra.sweep.dir={sweep_dir}", fault_injection=True)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    jobs = sorted(path.parent for path in sweep_dir.glob("*/.hydra"))
    assert [job.name[:3] for job in jobs] == ["000", "001"]  # job 2 never started
    finished, killed = jobs
    assert (finished / "metrics.json").is_file() and not (killed / "metrics.json").exists()
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    (line,) = error_lines(stopped)
    assert line.startswith(f"error: stopped by SIGTERM at epoch 1; {killed / 'checkpoints' / 'last.ckpt'} holds the last finished epoch: ")
    command = line.split("resume the whole sweep with: ", 1)[1]
    assert command.endswith(f"hydra.sweep.dir={sweep_dir} ckpt_path=last")
    # Everything but the log, which gains a line saying the job was kept.
    kept = {
        path: (path.read_bytes(), path.stat().st_mtime_ns) for path in finished.rglob("*") if path.is_file() and path.name != "train.log"
    }

    resumed = paste(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    jobs = sorted(path.parent for path in sweep_dir.glob("*/.hydra"))
    assert [job.name[:3] for job in jobs] == ["000", "001", "002"] and jobs[:2] == [finished, killed]  # the same folders
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in kept} == kept  # the finished job is not run again
    assert (finished / "train.log").read_text().endswith("finished before the sweep was stopped: kept, not run again\n")
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert json.loads((killed / "metrics.json").read_text())["epochs"] == 3
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert sorted(summary["run"]) == [job.name for job in jobs] and summary["error"].isna().all()
    assert not summary["overrides"].str.contains("ckpt_path").any()
    assert sorted(summary["overrides"].str.extract(r"model.dim=(\d+)")[0].astype(int)) == [8, 16, 32]


@pytest.mark.slow
def test_a_sweep_resumed_with_other_overrides_is_refused_with_a_command_that_works(finished_sweep, tmp_path):
    sweep_dir = shutil.copytree(finished_sweep, tmp_path / "sweep")  # `finished_sweep` (conftest.py) is shared
    jobs = sorted(path.parent for path in sweep_dir.glob("*/.hydra"))
    (jobs[1] / "metrics.json").unlink()  # as if killed before its first checkpoint
    for path in (jobs[1] / "checkpoints").iterdir():
        path.unlink()
    refused = run_module(
        "recsys_lightning.train",
        "-m",
        *RUN,
        "trainer.max_epochs=1",
        "model.dim=8,32",
        f"hydra.sweep.dir={sweep_dir}",
        "ckpt_path=last",
    )
    assert refused.returncode == 1
    (line,) = error_lines(refused)
    assert line.startswith(
        f"error: hydra.sweep.dir={sweep_dir}: the sweep there was started with other overrides (multirun.yaml: it has "
        "model.dim=8,16, this command model.dim=8,32); resume it with: "
    )
    assert sorted(path.parent for path in sweep_dir.glob("*/.hydra")) == jobs  # nothing written

    resumed = paste(line.split("resume it with: ", 1)[1])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(path.parent for path in sweep_dir.glob("*/.hydra")) == jobs
    assert json.loads((jobs[1] / "metrics.json").read_text())["best_checkpoint"] == "checkpoints/epoch000.ckpt"  # run fresh
    assert pd.read_csv(sweep_dir / "summary.csv")["error"].isna().all()


def test_a_sweep_resumed_with_its_overrides_in_another_order_is_refused(tmp_path):
    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task: ['model.dim=8,16', 'seed=1,2']\n    hydra: [hydra.mode=MULTIRUN]\n"
    )
    check_sweep_resume(tmp_path, ["model.dim=8,16", "seed=1,2", "ckpt_path=last"], ["hydra.sweep.dir=x", "hydra/launcher=slurm"])
    with pytest.raises(ConfigError) as refused:
        check_sweep_resume(tmp_path, ["seed=1,2", "model.dim=8,16", "ckpt_path=last"], [])
    assert "(multirun.yaml: the same overrides in another order, which numbers its jobs otherwise); resume it with: " in str(refused.value)
    assert str(refused.value).endswith(f"-m model.dim=8,16 seed=1,2 hydra.sweep.dir={tmp_path} ckpt_path=last")


@pytest.mark.parametrize(
    "record, message",
    [
        (None, "holds no sweep to resume (no multirun.yaml); point hydra.sweep.dir at the stopped sweep's folder, or drop ckpt_path=last"),
        (
            "hydra:\n  overrides:\n    task: [1, 2]\n    hydra: []\n",
            "multirun.yaml: holds no hydra.overrides.task and .hydra lists of strings",
        ),
        ("a: &a [x]\nb: *a\n", "multirun.yaml: holds YAML anchors or aliases, which Hydra never writes"),
        ("[unclosed", "multirun.yaml: cannot be read (ParserError"),
    ],
)
def test_a_sweep_folder_without_a_readable_record_is_not_resumed(tmp_path, record, message):
    if record is not None:
        (tmp_path / "multirun.yaml").write_text(record)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_sweep_resume(tmp_path, ["ckpt_path=last"], [])


@pytest.mark.slow
def test_ckpt_path_last_into_a_new_sweep_folder_is_refused_not_run_fresh(tmp_path):
    result = run_module("recsys_lightning.train", "-m", *RUN, "model.dim=8,16", "ckpt_path=last", f"paths.output_dir={tmp_path}")
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert "holds no sweep to resume (no multirun.yaml)" in line
    assert not list(tmp_path.glob("multiruns/*/*/*"))


def test_ckpt_path_last_outside_a_sweep_still_needs_a_last_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match=r"last.ckpt does not exist; nothing to resume here, drop ckpt_path to start fresh"):
        run_training(training_config(*RUN, "ckpt_path=last", run_dir=tmp_path / "run"))


@pytest.mark.parametrize(
    "task",
    [["model.hidden=[64,32]", "data.path=my data/it's.csv", "+callbacks.x._target_=a.B", "~logger"], ["ckpt_path=last", "seed=1,2"]],
)
def test_a_printed_resume_command_splits_back_into_the_overrides_it_was_built_from(task):
    words = shlex.split(command_line(task, ["hydra.mode=MULTIRUN", "hydra.sweep.dir=old"], "hydra.sweep.dir", Path("new dir"), sweep=True))
    assert words[1:4] == ["-m", "recsys_lightning.train", "-m"]
    assert words[4:] == [override for override in task if not override.startswith("ckpt_path")] + [
        "hydra.sweep.dir=new dir",
        "ckpt_path=last",
    ]
