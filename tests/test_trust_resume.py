"""Issue 21, defects 6 and 7, through the real entry point: a resume may change only what neither trains
nor judges the model (every other key of the config is compared with the checkpoint's record), and a
signal in any phase of a run ends it with one line whose command, pasted, goes on from there."""

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from recsys_lightning.data.synthetic import SyntheticDataModule
from recsys_lightning.errors import ConfigError, RunInterrupted
from recsys_lightning.runs.resume_command import command_line
from recsys_lightning.runs.run_config import changed_settings, check_same_config, config_record
from recsys_lightning.train import train as run_training

from helpers import ROOT, SMALL_DATA, SMALL_RUN, run_module, training_config

RUN = [*SMALL_RUN, "trainer.max_epochs=2"]  # the fresh runs here; `finished_run` (conftest.py) holds 3 epochs


def train(run_dir, *overrides):
    return run_module("recsys_lightning.train", *RUN, f"hydra.run.dir={run_dir}", *overrides, fault_injection=True)


def error_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return line


def paste(command: str) -> subprocess.CompletedProcess:
    """The printed command run by a shell from the project root, as a user pastes it (fault_injection importable)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(ROOT / "tests")}
    return subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def snapshot(run_dir) -> dict:
    return {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file() and path.suffix in (".ckpt", ".json", ".yaml")}


def copy_run(run_dir, tmp_path):
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(run_dir), str(copy)], check=True)
    return copy


# -- defect 6: every key that trains or judges is compared -------------------------------------------


@pytest.mark.slow
def test_resuming_with_another_val_users_is_refused_and_changes_nothing(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    before = snapshot(run_dir)
    result = train(run_dir, "ckpt_path=last", "trainer.max_epochs=4", "data.val_users=50")
    assert result.returncode == 1
    line = error_line(result)
    assert "this run changes data.val_users (null -> 50), which a resumed run cannot change" in line, line
    assert "revert them, or start a new run folder (drop ckpt_path and hydra.run.dir)" in line
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.split_ratios=[0.7,0.2,0.1]", "data.split_ratios ([0.8,0.1,0.1] -> [0.7,0.2,0.1])"),
        ("seed=7", "seed (42 -> 7)"),
        ("eval.ks=[5,10]", "eval.ks ([10,20] -> [5,10])"),
        ("monitor.metric=val/recall@10", "monitor.metric (${loss_monitor:${loss._target_}} -> val/recall@10)"),
        ("loss.l2=0.5", "loss.l2 (0.01 -> 0.5)"),
        ("data.eval_chunk_size=64", "data.eval_chunk_size (1024 -> 64)"),
        ("+trainer.precision=bf16-mixed", "trainer.precision (<absent> -> bf16-mixed)"),
        ("~callbacks.early_stopping", "callbacks.early_stopping ({...} -> <absent>)"),
    ],
)
def test_resuming_with_a_key_that_trains_or_judges_changed_is_refused(override, expected):
    """The neighbours of data.val_users (above, through the entry point), compared as train() compares them
    before any data loads: the checkpoint's record against the resuming run's config."""
    recorded = config_record(training_config(*RUN, run_dir="/a"))
    resuming = training_config(*RUN, "ckpt_path=last", "trainer.max_epochs=3", override, run_dir="/a")
    with pytest.raises(ConfigError) as refused:
        check_same_config(recorded, resuming, "last.ckpt")
    line = str(refused.value)
    assert f"this run changes {expected}" in line and "which a resumed run cannot change" in line, line


@pytest.mark.slow
def test_resuming_with_only_keys_a_resume_may_change_continues(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    result = train(run_dir, "ckpt_path=last", "trainer.max_epochs=4", "eval.ks=[20,10]", "callbacks.progress_bar.refresh_rate=1", "~logger")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 4


def test_keys_a_resume_may_change_are_not_differences():
    recorded = config_record(training_config(*RUN, run_dir="/a"))
    changed = training_config(
        *SMALL_DATA,
        "trainer.max_epochs=9",
        "trainer.accelerator=auto",
        "callbacks.progress_bar.refresh_rate=5",
        "projector.max_items=10",
        "run_test=false",
        "~logger",
        "paths.output_dir=/elsewhere",
        "trainer.log_every_n_steps=1",
        "ckpt_path=last",
        run_dir="/b",
    )
    assert changed_settings(recorded, changed) == []


def test_a_record_naming_a_class_by_its_name_before_a_move_is_no_difference():
    """A run folder made before issue 23 records the checkpoint plugin as recsys_lightning.checkpoint_io.*: it resumes."""
    cfg = training_config(*SMALL_RUN, run_dir="/a")
    recorded = config_record(cfg)
    (plugin,) = recorded["config"]["trainer"]["plugins"]
    assert plugin["_target_"] == "recsys_lightning.runs.checkpoint_io.AtomicCheckpointIO"
    plugin["_target_"] = "recsys_lightning.checkpoint_io.AtomicCheckpointIO"
    assert changed_settings(recorded, cfg) == []
    plugin["_target_"] = "recsys_lightning.other.AtomicCheckpointIO"
    assert [key for key, _, _ in changed_settings(recorded, cfg)] == ["trainer.plugins"]


def test_a_run_recorded_before_auto_resumes_with_its_own_numbers():
    """Before issue 27 a record held data.batch_size 4096 and patience 10 where the config now says auto: the
    resume takes the recorded numbers (in range only) and is no difference; an explicit other number is one."""
    recorded = config_record(training_config(*SMALL_RUN, "data.batch_size=4096", "callbacks.early_stopping.patience=10", run_dir="/a"))
    cfg = training_config(*SMALL_RUN, "data.batch_size=auto", run_dir="/a")
    assert (cfg.data.batch_size, cfg.callbacks.early_stopping.patience) == ("auto", "auto")
    check_same_config(recorded, cfg, "x.ckpt")
    assert (cfg.data.batch_size, cfg.callbacks.early_stopping.patience) == (4096, 10)
    recorded["config"]["data"]["batch_size"] = 2**40  # a crafted record sizes nothing: auto stays, and differs
    cfg = training_config(*SMALL_RUN, "data.batch_size=auto", run_dir="/a")
    with pytest.raises(ConfigError, match=r"this run changes data.batch_size \(1099511627776 -> auto\)"):
        check_same_config(recorded, cfg, "x.ckpt")
    assert cfg.data.batch_size == "auto"
    recorded["config"]["data"]["batch_size"] = 4096
    with pytest.raises(ConfigError, match=r"this run changes data.batch_size \(4096 -> 256\)"):
        check_same_config(recorded, training_config(*SMALL_RUN, "data.batch_size=256", run_dir="/a"), "x.ckpt")


@pytest.mark.parametrize("record", [None, {"should_stop": False}])
def test_a_checkpoint_without_a_config_record_is_refused(record):
    with pytest.raises(ConfigError, match=r"^ckpt_path=x.ckpt: it carries no record of the config it was trained with"):
        check_same_config(record, training_config(), "x.ckpt")


def test_raising_max_epochs_is_refused_where_a_key_reads_it():
    """scheduler=cosine's period is ${trainer.max_epochs}: its text stays the same, its value does not."""
    recorded = config_record(training_config("scheduler=cosine", "trainer.max_epochs=3", run_dir="/a"))
    assert changed_settings(recorded, training_config("scheduler=cosine", "trainer.max_epochs=5", run_dir="/a")) == [
        ("scheduler.scheduler.T_max", 3, 5)
    ]


def deeply_nested(depth: int) -> dict:
    record: dict = {}
    for _ in range(depth):
        record = {"a": record}
    return record


@pytest.mark.parametrize(
    "record",
    [[1, 2], {"config": {1: "key not text"}, "resolved": {}}, {"config": {"seed": object()}, "resolved": {}}, {"config": {}, "resolved": 3}]
    + [{"config": deeply_nested(5000), "resolved": {}}],
    ids=["a list", "a key not text", "an object", "resolved values not a mapping", "nested far deeper than any config"],
)
def test_a_malformed_config_record_is_one_line(record):
    with pytest.raises(ConfigError, match="its record of the config it was trained with is malformed"):
        check_same_config(record, training_config(), "x.ckpt")


@pytest.mark.slow
def test_resuming_on_data_whose_file_changed_under_the_same_config_is_refused(tmp_path):
    """The config is the same; the catalogue the checkpoint carries tells the data apart."""
    data = tmp_path / "interactions.csv"
    rows = [f"{user},{(user * 7 + step) % 40}" for user in range(30) for step in range(12)]
    data.write_text("\n".join(["userId,itemId", *rows]) + "\n")
    overrides = ["data=csv", f"data.path={data}", "debug=quick", "trainer.accelerator=cpu"]
    run_training(training_config(*overrides, run_dir=tmp_path / "run"))
    moved = [f"{user},{(user * 7 + step + 1) % 40}" for user in range(10) for step in range(12)]  # same users and items
    data.write_text("\n".join(["userId,itemId", *moved, *rows[120:]]) + "\n")
    with pytest.raises(ConfigError, match="it was trained on other data"):
        run_training(training_config(*overrides, "trainer.max_epochs=2", "ckpt_path=last", run_dir=tmp_path / "run"))


# -- defect 7: a signal in any phase says what to do, and the command it prints works ------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ended_by", "extra", "epochs"),
    [("max_epochs", [], 2), ("early stopping", ["optimizer.lr=1e-12", "callbacks.early_stopping.patience=1", "trainer.max_epochs=6"], 2)],
)
def test_sigterm_while_the_best_checkpoint_is_tested_prints_a_command_that_only_tests(tmp_path, ended_by, extra, epochs):
    """The fit had ended (at max_epochs, or early stopping with lr=1e-12 after epoch 1): resuming trains no epoch."""
    run_dir = tmp_path / "run"
    stop = ["+callbacks.stop._target_=fault_injection.SignalAtHook", "+callbacks.stop.hook=on_test_start", "+callbacks.stop.stage=test"]
    stopped = train(run_dir, *extra, *stop, f"+callbacks.stop.once={tmp_path / 'once'}")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    line = error_line(stopped)
    assert line.startswith("error: stopped by SIGTERM after training, before the best checkpoint was validated and tested;"), line
    assert "last.ckpt holds the finished training: validate, test and write metrics.json with: " in line
    assert not (run_dir / "metrics.json").exists()
    resumed = paste(line.split(" with: ", 1)[1])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "train/loss" not in resumed.stdout + resumed.stderr  # no epoch trained: EpochLog writes one line per epoch
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == epochs and metrics["test/ndcg@10"] > 0 and (run_dir / metrics["best_checkpoint"]).is_file()
    overrides = [*RUN, *extra, *stop, f"+callbacks.stop.once={tmp_path / 'once'}", "ckpt_path=last"]
    with pytest.raises(ConfigError) as finished:  # tested now: nothing is left to resume
        run_training(training_config(*overrides, run_dir=run_dir))
    expected = "early stopping ended its training after 2 epochs" if ended_by == "early stopping" else "raise trainer.max_epochs above 2"
    assert expected in str(finished.value), str(finished.value)


@pytest.mark.slow
def test_ctrl_c_right_after_fit_exits_130_with_the_command_and_writes_no_metrics(tmp_path):
    run_dir = tmp_path / "run"
    stopped = train(
        run_dir,
        "+callbacks.stop._target_=fault_injection.SignalAtHook",
        "+callbacks.stop.hook=on_validation_start",
        "+callbacks.stop.stage=validate",
        "+callbacks.stop.sent=SIGINT",
        f"+callbacks.stop.once={tmp_path / 'once'}",
    )
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    line = error_line(stopped)
    assert line.startswith("error: stopped by Ctrl-C (SIGINT) after training"), line
    assert line.endswith(f"hydra.run.dir={run_dir} ckpt_path=last")
    assert not (run_dir / "metrics.json").exists()
    resumed = paste(line.split(" with: ", 1)[1])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_sigterm_while_data_loads_prints_the_command_that_starts_it_again(tmp_path):
    run_dir = tmp_path / "run"
    stopped = train(run_dir, "data._target_=fault_injection.TermWhileLoading", f"+data.once={tmp_path / 'once'}")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    line = error_line(stopped)
    assert line.startswith("error: stopped by SIGTERM while loading data, before any checkpoint was written; start it again with: "), line
    command = line.split(" with: ", 1)[1]
    assert "ckpt_path" not in command and f"hydra.run.dir={run_dir}" in shlex.split(command)
    again = paste(command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_sigterm_while_a_resumed_run_loads_data_names_the_kept_checkpoint(finished_run, tmp_path, monkeypatch):
    """In this process: the handler is the entry point's, the data source sends the signal as it loads."""
    run_dir = copy_run(finished_run, tmp_path)

    def load_and_stop(self):
        os.kill(os.getpid(), 15)
        raise AssertionError("SIGTERM did not stop the load")

    monkeypatch.setattr(SyntheticDataModule, "load", load_and_stop)
    with pytest.raises(RunInterrupted) as stopped:
        run_training(training_config(*RUN, "trainer.max_epochs=4", "ckpt_path=last", run_dir=run_dir))
    message = str(stopped.value)
    assert stopped.value.exit_code == 143
    last = run_dir / "checkpoints" / "last.ckpt"
    assert message.startswith(f"stopped by SIGTERM while loading data; {last} holds the last finished epoch: resume with: "), message
    assert message.endswith(f"hydra.run.dir={run_dir} ckpt_path=last")


def test_the_printed_command_replaces_the_folder_and_checkpoint_and_quotes_what_a_shell_would_split():
    typed = ["data=csv", "data.path=my file.csv", "ckpt_path=/elsewhere/last.ckpt", "model.dim=8"]
    command = command_line(typed, ["hydra.run.dir=old"], "hydra.run.dir", Path("/runs/a b"), sweep=False)
    assert shlex.split(command)[1:] == [
        "-m",
        "recsys_lightning.train",
        "data=csv",
        "data.path=my file.csv",
        "model.dim=8",
        "hydra.run.dir=/runs/a b",
        "ckpt_path=last",
    ]
