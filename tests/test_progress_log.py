"""Long work is not silent when stdout is not a terminal: progress lines at a fixed interval in time,
while a terminal keeps the progress bar (issue 27, item 3)."""

import fcntl
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
import time
import types

import pytest
import torch

from recsys_lightning import progress
from recsys_lightning.callbacks import ProgressLog
from recsys_lightning.data.batches import RankingChunk
from recsys_lightning.data.synthetic import SyntheticDataModule

from helpers import ROOT, random_interactions, run_module


def fake_trainer(num_training_batches=4):
    return types.SimpleNamespace(
        is_global_zero=True, num_training_batches=num_training_batches, current_epoch=2, global_step=9, num_val_batches=[3]
    )


def run_one_epoch(progress, trainer):
    batch = torch.zeros(256)
    progress.setup(trainer, None, "fit")
    progress.on_train_epoch_start(trainer, None)
    for batch_idx in range(trainer.num_training_batches):
        progress.on_train_batch_end(trainer, None, None, batch, batch_idx)


def test_progress_lines_when_stdout_is_not_a_terminal(monkeypatch, caplog):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    with caplog.at_level(logging.INFO, logger="recsys_lightning.progress"):
        run_one_epoch(ProgressLog(interval_seconds=1e-9), fake_trainer())
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 4
    assert lines[0].startswith("epoch 2: step 1 of 4 (global step 9), ") and " pairs/s, ~" in lines[0]
    assert lines[0].endswith(" to the epoch's end") and lines[-1].endswith("~0 s to the epoch's end")


def test_no_progress_lines_in_a_terminal_between_intervals_or_at_zero(monkeypatch, caplog):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    with caplog.at_level(logging.INFO, logger="recsys_lightning.progress"):
        run_one_epoch(ProgressLog(interval_seconds=1e-9), fake_trainer())
        monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
        run_one_epoch(ProgressLog(interval_seconds=3600), fake_trainer())
        run_one_epoch(ProgressLog(interval_seconds=0), fake_trainer())
    assert not caplog.records


def test_ranking_chunk_lines_count_users_per_second(monkeypatch, caplog):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    trainer = fake_trainer()
    trainer.num_test_batches = [2]
    chunk = RankingChunk(torch.arange(50), *(torch.zeros(0, dtype=torch.long),) * 4, torch.zeros(0))
    log_progress = ProgressLog(interval_seconds=1e-9)
    with caplog.at_level(logging.INFO, logger="recsys_lightning.progress"):
        log_progress.setup(trainer, None, "test")
        log_progress.on_test_epoch_start(trainer, None)
        for batch_idx in range(2):
            log_progress.on_test_batch_end(trainer, None, None, chunk, batch_idx)
    first, last = [record.getMessage() for record in caplog.records]
    assert first.startswith("test: user chunk 1 of 2, ") and " users/s, ~" in first
    assert last.endswith("~0 s to its end")


DATA_STEPS = [
    "keeping the latest row of each (user, item)",
    "indexing users and items",
    "splitting (ratio)",
    "user x item CSRs of train, valid and test",
    "training positives and the catalogue",
]


def build_synthetic_data():
    SyntheticDataModule(num_users=50, num_items=40, num_interactions=400).setup("fit")


def test_building_data_past_the_interval_names_each_step_as_it_starts_and_ends(monkeypatch, caplog):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    with caplog.at_level(logging.INFO, logger="recsys_lightning.progress"), progress.every(1e-9):
        build_synthetic_data()
    *changes, last = [record.getMessage() for record in caplog.records if record.name == "recsys_lightning.progress"]
    ended = [line.removeprefix("data: ").split(" done in ")[0] for line in changes]
    started = [line.split("; ", 1)[1].rsplit(" (", 1)[0] for line in changes]
    assert ended == ["loading", *started[:-1]]  # each step's end is the next one's start
    assert started[:2] == ["drawing synthetic interactions, round 1", "dropping repeated draws"]
    assert [step for step in started if step in DATA_STEPS] == DATA_STEPS  # in the order setup runs them
    assert "; splitting (ratio) (400 rows)" in changes[started.index("splitting (ratio)")]
    assert last.startswith(f"data: {DATA_STEPS[-1]} done; built in ")


def test_a_long_step_gets_a_line_every_interval_with_its_rows_so_far(monkeypatch, caplog):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    monkeypatch.setattr(progress, "MIN_WATCH_SECONDS", 0.01)
    with caplog.at_level(logging.INFO, logger="recsys_lightning.progress"), progress.every(0.02):
        with progress.building("data"):
            progress.stage("reading interactions.csv")
            progress.advance(1_000_000)
            time.sleep(0.2)  # one long numpy call: no loop of ours runs meanwhile
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) >= 3
    assert all(line.startswith("data: reading interactions.csv: 1,000,000 so far, ") for line in lines[:-1])
    assert lines[-1].startswith("data: reading interactions.csv done; built in ")


def test_a_build_that_fails_says_nothing_was_built(monkeypatch, caplog):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    with caplog.at_level(logging.INFO, logger="recsys_lightning.progress"), progress.every(1e-9):
        with pytest.raises(ValueError), progress.building("data"):
            progress.stage("splitting (ratio)", 10)
            raise ValueError("a bad row")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == ["data: loading done in 0 s; splitting (ratio) (10 rows)"]


def test_no_data_progress_lines_at_the_default_interval_in_a_terminal_or_at_zero(monkeypatch, caplog):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    with caplog.at_level(logging.INFO, logger="recsys_lightning.progress"):
        assert progress.interval_seconds() == progress.DEFAULT_INTERVAL_SECONDS
        build_synthetic_data()
        with progress.every(0):
            build_synthetic_data()
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
        with progress.every(1e-9):
            build_synthetic_data()
    assert not [record for record in caplog.records if record.name == "recsys_lightning.progress"]
    assert progress.interval_seconds() == progress.DEFAULT_INTERVAL_SECONDS  # `every` gives the interval back


def small_csv(path):
    frame = random_interactions(num_users=40, num_items=60, per_user=15).rename(columns={"user_id": "userId", "item_id": "itemId"})
    frame.to_csv(path, index=False)
    return path


QUICK = ("trainer.max_epochs=1", "callbacks.progress_log.interval_seconds=0.000001", "projector.max_items=0")


@pytest.mark.slow
def test_a_run_piped_to_a_file_logs_progress_lines(tmp_path):
    path = small_csv(tmp_path / "interactions.csv")
    result = run_module("recsys_lightning.train", "data=csv", f"data.path={path}", f"paths.output_dir={tmp_path / 'out'}", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 0: step 1 of 15 (global step 1), " in result.stdout and " pairs/s, ~" in result.stdout
    assert "epoch 0 validation: user chunk 1 of 1, " in result.stdout
    assert "test: user chunk 1 of 1, " in result.stdout and " users/s, ~0 s to its end" in result.stdout
    assert "data: keeping the latest row of each (user, item) done in " in result.stdout
    assert "data: training positives and the catalogue done; built in " in result.stdout
    (log_file,) = (tmp_path / "out").glob("runs/*/*/train.log")
    assert "epoch 0: step 15 of 15" in log_file.read_text()


@pytest.mark.slow
def test_a_run_in_a_terminal_keeps_the_progress_bar_and_logs_no_progress_lines(tmp_path):
    path = small_csv(tmp_path / "interactions.csv")
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a window: tqdm draws no bar in 0 columns
    command = [sys.executable, "-m", "recsys_lightning.train", "data=csv", f"data.path={path}", f"paths.output_dir={tmp_path / 'out'}"]
    process = subprocess.Popen([*command, *QUICK], cwd=ROOT, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: every process holding it has exited
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=300) == 0, output[-3000:]
    text = output.decode(errors="replace")
    assert "Epoch 0: 100%" in text  # Lightning's progress bar
    assert "pairs/s" not in text and "user chunk" not in text
