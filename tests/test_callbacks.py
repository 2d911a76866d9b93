"""The callbacks' per-batch hooks read what Lightning hands them: a loss in a dict, or nothing for a skipped step."""

import sys
import types

import pytest
import torch

from recsys_lightning.callbacks import NonFiniteLossGuard
from recsys_lightning.errors import TrainingDiverged

MODULE = types.SimpleNamespace(device=torch.device("cpu"))


def trainer(num_training_batches=4):
    return types.SimpleNamespace(num_training_batches=num_training_batches, checkpoint_callbacks=[], global_step=4, current_epoch=0)


def test_nonfinite_loss_guard_skips_steps_without_a_loss_and_still_stops_at_the_epoch_end():
    guard, run = NonFiniteLossGuard(check_every=50), trainer()
    guard.on_train_epoch_start(run, MODULE)
    guard.on_train_batch_end(run, MODULE, {"loss": torch.tensor(float("nan"))}, None, 0)
    guard.on_train_batch_end(run, MODULE, {}, None, 1)  # training_step returned None: Lightning passes {}
    guard.on_train_batch_end(run, MODULE, None, None, 2)
    with pytest.raises(TrainingDiverged, match="the loss became nan at epoch 0, batch 0"):
        guard.on_train_batch_end(run, MODULE, torch.tensor(1.0), None, 3)


def test_the_progress_bar_shows_only_in_a_terminal(monkeypatch):
    from recsys_lightning.callbacks import TerminalProgressBar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert TerminalProgressBar(refresh_rate=5).is_disabled
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert TerminalProgressBar(refresh_rate=5).refresh_rate == 5
