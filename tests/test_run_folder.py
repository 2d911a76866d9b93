"""One run per folder, honest exits, crash-safe checkpoints, and run records that say what happened,
through the real entry point on small synthetic data.

A refusal that train() itself makes is asked of it in this process (`refusal`): the entry point turns
any such error into one line and exit code 1, as the runs through it here show for each place a run is
refused (Hydra's callback, before fit, inside fit)."""

import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import pytest
import torch

from recsys_lightning.errors import ConfigError, RecsysError
from recsys_lightning.runs.atomic import atomic_file
from recsys_lightning.runs.checkpoint_file import FORMAT_KEY
from recsys_lightning.runs.checkpoint_io import AtomicCheckpointIO
from recsys_lightning.runs.run_folder import RunFolder
from recsys_lightning.train import train as run_training

from helpers import ROOT, SMALL_RUN, SMALL_SWEEP, made_then_interrupted, run_module, training_config

RUN = [*SMALL_RUN, "trainer.max_epochs=3"]  # as `finished_run` (conftest.py) was trained


def train(run_dir, *overrides, fault_injection=False):
    return run_module("recsys_lightning.train", *RUN, f"hydra.run.dir={run_dir}", *overrides, fault_injection=fault_injection)


def train_in_process(run_dir, *overrides):
    """The same run in this process: the function the entry point calls with the config Hydra composed
    (no interpreter to start; no Hydra run record written, nor its callbacks' checks run)."""
    return run_training(training_config(*RUN, *overrides, run_dir=run_dir))


def refusal(run_dir, *overrides) -> str:
    """What train() refuses this run with: the one line the entry point prints, with exit code 1."""
    with pytest.raises(RecsysError) as refused:
        train_in_process(run_dir, *overrides)
    message = str(refused.value)
    assert refused.value.exit_code == 1 and "\n" not in message, message
    return message


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def checkpoint_epoch(path) -> int:
    return torch.load(path, weights_only=True)["epoch"]


@pytest.mark.slow
def test_a_fresh_run_into_a_folder_holding_a_run_is_refused_and_changes_nothing(finished_run):
    before = {path: path.stat().st_mtime_ns for path in finished_run.rglob("*") if path.is_file() and path.suffix in (".ckpt", ".json")}
    result = train(finished_run)
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert "already holds a run (metrics.json, checkpoints/" in line and "ckpt_path=last" in line
    after = {path: path.stat().st_mtime_ns for path in finished_run.rglob("*") if path.is_file() and path.suffix in (".ckpt", ".json")}
    assert after == before


@pytest.mark.slow
def test_a_second_process_cannot_train_into_a_folder_being_trained(tmp_path):
    holder = RunFolder(tmp_path / "busy")
    holder.claim(resuming=False)
    try:
        result = train(tmp_path / "busy")
        assert result.returncode == 1
        (line,) = error_lines(result)
        assert f"pid {os.getpid()} is training into this folder right now" in line
        with pytest.raises(ConfigError, match="training into this folder"):
            RunFolder(tmp_path / "busy").claim(resuming=True)
    finally:
        holder.release()
    RunFolder(tmp_path / "busy").claim(resuming=False)  # released: free again (and this process's lock ends with it)


def test_a_released_folder_keeps_no_lock_file_and_can_be_claimed_again(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.claim(resuming=False)
    assert (tmp_path / "run" / ".run.lock").read_text() == f"pid {os.getpid()}\n"
    folder.release()
    assert not (tmp_path / "run" / ".run.lock").exists()
    again = RunFolder(tmp_path / "run")
    again.claim(resuming=False)
    again.release()
    assert os.listdir(tmp_path / "run") == []


def test_a_lock_taken_on_a_removed_lock_file_is_taken_again_on_the_folders_file(tmp_path, monkeypatch):
    """A process that opened `.run.lock` just before its holder removed it and unlocked must not hold the folder
    through the removed file: it locks the file now at that path, which a third process would lock too."""
    folder = RunFolder(tmp_path)
    real_flock = fcntl.flock
    removed = []

    def flock_after_the_holder_left(handle, operation):
        if not removed:  # the holder removes the file this process has open, then unlocks
            removed.append(True)
            (tmp_path / ".run.lock").unlink()
        real_flock(handle, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_the_holder_left)
    folder.claim(resuming=False)
    with pytest.raises(ConfigError, match="training into this folder right now"):
        RunFolder(tmp_path).claim(resuming=True)
    folder.release()


@pytest.mark.slow
def test_files_written_atomically_get_normal_permissions(finished_run):
    umask = os.umask(0)
    os.umask(umask)
    for path in [finished_run / "metrics.json", *(finished_run / "checkpoints").glob("*.ckpt")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert not [path for path in finished_run.rglob(".*.tmp")]


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_an_interrupt_as_the_temporary_file_is_made_leaves_no_file(tmp_path, monkeypatch, mode):
    monkeypatch.setattr(os, "open", made_then_interrupted(os.open))
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(tmp_path / "recs.csv", mode):
            pass
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_temporary_name_someone_else_holds_is_refused_and_left_alone(tmp_path, monkeypatch):
    taken = tmp_path / ".recs.csv.0000000000000000.tmp"
    taken.write_text("theirs")
    monkeypatch.setattr("recsys_lightning.runs.atomic.secrets.token_hex", lambda size: "0" * 2 * size)
    with pytest.raises(FileExistsError):
        with atomic_file(tmp_path / "recs.csv"):
            pass
    assert [path.name for path in tmp_path.iterdir()] == [taken.name] and taken.read_text() == "theirs"


class FailsHalfwayThroughSaving:
    def __reduce__(self):
        raise RuntimeError("cannot be saved")


def test_an_interrupted_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, target)
    with pytest.raises(RuntimeError, match="cannot be saved"):
        AtomicCheckpointIO().save_checkpoint({"epoch": 2, "broken": FailsHalfwayThroughSaving()}, target)
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(tmp_path / "metrics.json") as handle:
            handle.write("{")
            raise KeyboardInterrupt
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.slow
@pytest.mark.parametrize(("injected", "exit_code", "signal_name"), [("TermAt", 143, "SIGTERM"), ("InterruptAt", 130, "Ctrl-C (SIGINT)")])
def test_a_signal_exits_with_its_code_and_how_to_resume_and_the_resumed_run_finishes(tmp_path, injected, exit_code, signal_name):
    run_dir = tmp_path / "run"
    stop = [f"+callbacks.stop._target_=fault_injection.{injected}", "+callbacks.stop.epoch=1", "+callbacks.stop.batch=3"]
    stop.append(f"+callbacks.stop.once={tmp_path / 'once'}")  # a resume keeps the config: the callback stays, fired
    result = train(run_dir, *stop, fault_injection=True)
    assert result.returncode == exit_code, result.stderr[-3000:]
    (line,) = error_lines(result)
    assert f"stopped by {signal_name} at epoch 1" in line and line.endswith(f"hydra.run.dir={run_dir} ckpt_path=last")
    assert not (run_dir / "metrics.json").exists()
    assert not (run_dir / ".run.lock").exists()  # an interrupted run removes its lock file too
    assert checkpoint_epoch(run_dir / "checkpoints" / "last.ckpt") == 0
    resumed = train(run_dir, *stop, "ckpt_path=last", fault_injection=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 3
    assert "exists and is not empty" not in resumed.stdout + resumed.stderr  # a resume's own checkpoints are expected there
    assert not (run_dir / ".run.lock").exists()


@pytest.mark.slow
def test_last_checkpoint_is_the_last_epoch_even_when_it_did_not_improve(tmp_path):
    """With lr=1e-12 (float32 weights cannot move) no epoch after the first improves: last.ckpt must still follow every epoch."""
    run_dir = tmp_path / "run"
    kill = ["+callbacks.kill._target_=fault_injection.KillAt", "+callbacks.kill.epoch=3", "+callbacks.kill.batch=2"]
    kill.append(f"+callbacks.kill.once={tmp_path / 'once'}")
    killed = train(run_dir, "optimizer.lr=1e-12", "trainer.max_epochs=5", *kill, fault_injection=True)
    assert killed.returncode == -signal.SIGKILL
    assert [path.name for path in sorted((run_dir / "checkpoints").glob("epoch*.ckpt"))] == ["epoch000.ckpt"]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2
    seconds_before_kill = next(state["seconds"] for name, state in last["callbacks"].items() if "TrainingTime" in name)
    resumed = train(run_dir, "optimizer.lr=1e-12", "trainer.max_epochs=5", *kill, "ckpt_path=last", fault_injection=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 5 and metrics["best_epoch"] == 0
    assert metrics["train_seconds"] > seconds_before_kill > 0  # the total over both processes, not the resumed part


@pytest.mark.slow
def test_a_truncated_last_checkpoint_names_the_newest_readable_one(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-r", str(finished_run), str(run_dir)], check=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:4096])  # what a full disk left behind before writes were atomic
    (best,) = (run_dir / "checkpoints").glob("epoch*.ckpt")
    result = train(run_dir, "ckpt_path=last")
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert "not a readable checkpoint, it may be truncated" in line and f"resume with ckpt_path={best}" in line


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.dim=16"], "this run changes model.dim (64 -> 16), which a resumed run cannot change"),
        (["data.num_items=150"], "this run changes data.num_items (200 -> 150)"),
        (["ckpt_path=nowhere.ckpt"], "nowhere.ckpt does not exist"),
    ],
)
def test_resuming_from_an_incompatible_or_missing_checkpoint_is_one_line(finished_run, tmp_path, overrides, expected):
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-r", str(finished_run), str(run_dir)], check=True)
    line = refusal(run_dir, *(["ckpt_path=last"] if not any(o.startswith("ckpt_path") for o in overrides) else []), *overrides)
    assert expected in line, line


@pytest.mark.slow
def test_evaluate_finds_relative_data_paths_from_another_folder(tmp_path):
    """A CSV run trained with a relative data.path is evaluated from the project root."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    rows = ["userId,itemId"] + [f"{user},{(user * 7 + step) % 40}" for user in range(30) for step in range(12)]
    (workdir / "interactions.csv").write_text("\n".join(rows) + "\n")
    command = [
        sys.executable,
        "-m",
        "recsys_lightning.train",
        "data=csv",
        "data.path=interactions.csv",
        "debug=quick",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    trained = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert trained.returncode == 0, trained.stderr[-3000:]
    evaluated = run_module("recsys_lightning.evaluate", f"run_dir={tmp_path / 'run'}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "metrics equal metrics.json" in evaluated.stdout


def copy_run(finished_run, tmp_path, name="run"):
    run_dir = tmp_path / name
    subprocess.run(["cp", "-r", str(finished_run), str(run_dir)], check=True)
    return run_dir


def edit_checkpoint(path, edit):
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, path)


def model_checkpoint_states(checkpoint):
    return [state for name, state in checkpoint["callbacks"].items() if name.startswith("ModelCheckpoint")]


@pytest.mark.slow
@pytest.mark.parametrize("field", ["best_model_path", "last_model_path", "best_k_models", "dirpath"])
def test_a_checkpoint_whose_records_name_files_elsewhere_is_refused_and_deletes_nothing(finished_run, tmp_path, field):
    """Lightning deletes a ModelCheckpoint's previous file by the path's text: `<dir>/../../victim` must never reach it."""
    run_dir = copy_run(finished_run, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")

    def point_outside(checkpoint):
        for state in model_checkpoint_states(checkpoint):
            outside = f"{state['dirpath']}/../../victim.txt"
            if field == "best_k_models":
                state["best_k_models"] = {outside: torch.tensor(1.0)}
            elif field == "dirpath":
                state["dirpath"], state["best_model_path"] = str(tmp_path), str(victim)
            else:
                state[field] = outside

    edit_checkpoint(run_dir / "checkpoints" / "last.ckpt", point_outside)
    line = refusal(run_dir, "trainer.max_epochs=5", "ckpt_path=last")
    assert "records name files outside their checkpoint folder" in line
    assert victim.read_text() == "precious"


@pytest.mark.slow
def test_a_refused_run_leaves_the_earlier_runs_hydra_record_as_it_was(finished_run):
    before = {path.name: path.read_bytes() for path in (finished_run / ".hydra").iterdir()}
    for overrides in (["seed=9"], ["seed=9", "ckpt_path=/nowhere/else.ckpt"]):
        assert train(finished_run, *overrides).returncode == 1
    assert {path.name: path.read_bytes() for path in (finished_run / ".hydra").iterdir()} == before


@pytest.mark.slow
def test_resuming_into_a_run_folder_from_another_folders_checkpoint_is_refused(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    result = train(run_dir, "trainer.max_epochs=5", f"ckpt_path={finished_run / 'checkpoints' / 'last.ckpt'}")
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert "already holds a run" in line


@pytest.mark.slow
def test_resuming_from_another_folders_checkpoint_into_a_fresh_folder_continues_it(finished_run, tmp_path):
    train_in_process(tmp_path / "continued", "trainer.max_epochs=4", f"ckpt_path={finished_run / 'checkpoints' / 'last.ckpt'}")
    assert json.loads((tmp_path / "continued" / "metrics.json").read_text())["epochs"] == 4


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.seed=5"], "this run changes data.seed (${seed} -> 5)"),
        (["optimizer=sparse_adagrad"], "this run changes model.sparse_gradients (false -> true), optimizer._target_ (torch.optim.Adam"),
        (["optimizer.lr=0.5"], "this run changes optimizer.lr (0.003 -> 0.5), which a resumed run cannot change"),
        (["loss=bce"], "this run changes loss._target_"),
        (["scheduler=cosine"], "this run changes scheduler"),
        (["callbacks.early_stopping.patience=1"], "this run changes callbacks.early_stopping.patience (auto -> 1)"),
        (["callbacks.early_stopping.monitor=val/recall@10"], "callbacks.early_stopping.monitor (${monitor.metric} -> val/recall@10)"),
        (["trainer.max_epochs=2"], "it already holds 3 epochs, so trainer.max_epochs=2 leaves nothing to train"),
    ],
)
def test_resuming_with_other_data_of_the_same_size_or_other_settings_is_one_line(finished_run, tmp_path, overrides, expected):
    run_dir = copy_run(finished_run, tmp_path)
    line = refusal(run_dir, "trainer.max_epochs=5", "ckpt_path=last", *overrides)
    assert expected in line, line


def absurd_loop_counters(checkpoint):
    checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"].update(completed=10**18, processed=10**18, ready=10**18, started=10**18)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda ckpt: ckpt.pop("loops"), "not a resumable training checkpoint (its 'loops' is missing"),
        (
            lambda ckpt: [ckpt.pop(key) for key in list(ckpt) if key not in ("state_dict", FORMAT_KEY)],
            "not a resumable training checkpoint",
        ),
        (
            lambda ckpt: [state.update(seconds=float("-inf")) for name, state in ckpt["callbacks"].items() if "TrainingTime" in name],
            "records -inf training seconds",
        ),
        (lambda ckpt: ckpt["optimizer_states"][0]["param_groups"][0].pop("betas"), "trained with another optimizer than this run's Adam"),
        (lambda ckpt: ckpt.pop("catalogue"), "carries no record of the data it was trained on"),
        (
            lambda ckpt: [state.update(best_score="abc") for name, state in ckpt["callbacks"].items() if name.startswith("EarlyStopping")],
            "the saved state of EarlyStopping (best_score) has the wrong type",
        ),
        (absurd_loop_counters, "Lightning could not restore its state"),
    ],
    ids=[
        "no loops",
        "weights only",
        "negative infinite seconds",
        "other optimizer state",
        "no catalogue",
        "bad early-stopping state",
        "absurd loop counters",
    ],
)
def test_a_checkpoint_lightning_cannot_resume_is_one_line(finished_run, tmp_path, edit, expected):
    run_dir = copy_run(finished_run, tmp_path)
    edit_checkpoint(run_dir / "checkpoints" / "last.ckpt", edit)
    line = refusal(run_dir, "trainer.max_epochs=5", "ckpt_path=last")
    assert expected in line, line


@pytest.mark.slow
def test_a_checkpoint_lightning_cannot_restore_is_one_line_through_the_entry_point(finished_run, tmp_path):
    """The one refusal made after Lightning's fit began, with Lightning's own failure handling in between."""
    run_dir = copy_run(finished_run, tmp_path)
    edit_checkpoint(run_dir / "checkpoints" / "last.ckpt", absurd_loop_counters)
    result = train(run_dir, "trainer.max_epochs=5", "ckpt_path=last")
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert "Lightning could not restore its state" in line, line


@pytest.mark.slow
def test_a_moved_run_folder_resumes_with_its_best_score(finished_run, tmp_path):
    """Copied elsewhere, the run's checkpoint records name the old folder: the best so far must still count."""
    run_dir = copy_run(finished_run, tmp_path, "moved")
    train_in_process(run_dir, "ckpt_path=last", "trainer.max_epochs=4")
    assert len(list((run_dir / "checkpoints").glob("epoch*.ckpt"))) == 1  # save_top_k=1 still holds: the old best was tracked
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / metrics["best_checkpoint"]).parent == run_dir / "checkpoints"


@pytest.mark.slow
def test_a_sweep_into_a_folder_holding_a_sweep_is_refused(finished_sweep, tmp_path):
    shutil.copytree(finished_sweep, tmp_path / "sweep")  # a finished sweep (conftest.py), shared: changed here on a copy
    sweep = [*SMALL_SWEEP, f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    before = {path: path.read_bytes() for path in (tmp_path / "sweep").rglob("*.yaml")}
    for job in (tmp_path / "sweep").glob("*/metrics.json"):
        job.unlink()  # jobs killed before they finished still hold their checkpoints
    second = run_module("recsys_lightning.train", *sweep)
    assert second.returncode == 1
    (line,) = error_lines(second)
    assert "already holds a sweep's runs" in line
    assert {path: path.read_bytes() for path in (tmp_path / "sweep").rglob("*.yaml")} == before


@pytest.mark.slow
@pytest.mark.parametrize("left_over", [None, "file", "folder"])
def test_a_refused_resume_restores_the_runs_hydra_record(finished_run, tmp_path, left_over):
    run_dir = copy_run(finished_run, tmp_path)
    before = {path.name: path.read_bytes() for path in (run_dir / ".hydra").glob("*.yaml")}
    stale = run_dir / ".hydra" / "before-resume"  # what a crash between backup and restore leaves
    if left_over == "file":
        stale.write_text("x")
    elif left_over == "folder":
        stale.mkdir()
        (stale / "zz.yaml").write_text("stale: true\n")
    result = train(run_dir, "ckpt_path=last", "data.seed=7", "trainer.max_epochs=5")
    assert result.returncode == 1 and "this run changes data.seed" in error_lines(result)[0]
    assert {path.name: path.read_bytes() for path in (run_dir / ".hydra").glob("*.yaml")} == before
    assert sorted(path.name for path in (run_dir / ".hydra").iterdir()) == sorted(before)


@pytest.mark.slow
@pytest.mark.parametrize(("ckpt_path", "expected"), [("checkpoints", "is a folder"), ("", "ckpt_path is empty")])
def test_a_checkpoint_path_that_is_no_file_says_so(finished_run, tmp_path, ckpt_path, expected):
    run_dir = copy_run(finished_run, tmp_path)
    result = train(run_dir, f"ckpt_path={run_dir / ckpt_path if ckpt_path else ckpt_path}")
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert expected in line, line


@pytest.mark.slow
def test_a_resume_may_reorder_eval_ks(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    metrics = train_in_process(run_dir, "ckpt_path=last", "trainer.max_epochs=4", "eval.ks=[20,10]")
    assert metrics["epochs"] == 4 and json.loads((run_dir / "metrics.json").read_text()) == metrics  # resumed and finished
    assert {f"{stage}/ndcg@{k}" for stage in ("val", "test") for k in (10, 20)} <= set(metrics)  # both ks, whatever the order
