"""Callbacks that break a training run on purpose, added from the command line in tests:
`+callbacks.kill._target_=fault_injection.KillAt` with `PYTHONPATH=tests`."""

import os
import signal

import pytorch_lightning as pl
import torch

from recsys_lightning.data.synthetic import SyntheticDataModule


def first_time(once: str | None) -> bool:
    """True unless the file `once` exists (and makes it): a fault given `once` fires in one process only, so
    the resume command a stopped run prints can be run as printed, injected callbacks and all (a resume
    must keep the config it was trained with)."""
    if once is None:
        return True
    if os.path.exists(once):
        return False
    open(once, "w").close()
    return True


class SignalAt(pl.Callback):
    """Send the signal `sent` to this process at the start of one batch (with `once`: in one process only)."""

    sent: signal.Signals

    def __init__(self, epoch: int, batch: int, once: str | None = None) -> None:
        self.epoch, self.batch, self.once = epoch, batch, once

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch and first_time(self.once):
            os.kill(os.getpid(), self.sent)


class KillAt(SignalAt):
    """SIGKILL: no handler, no cleanup, as an OOM killer does."""

    sent = signal.SIGKILL


class TermAt(SignalAt):
    """SIGTERM, as `kill`, a SLURM time limit or `docker stop` do."""

    sent = signal.SIGTERM


class PoisonWeightsAt(pl.Callback):
    """Fill every model weight with NaN at the start of one batch, so the loss goes NaN there."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            with torch.no_grad():
                for parameter in module.model.parameters():
                    parameter.fill_(float("nan"))


class InterruptAt(SignalAt):
    """SIGINT, as Ctrl-C in a terminal does."""

    sent = signal.SIGINT


class SignalAtHook(pl.Callback):
    """Send the signal named `sent` to this process when Lightning first calls `hook` in `stage` (fit,
    validate, test; None: any), e.g. hook=on_test_start: after fit, while the best checkpoint is tested.

    With `once` (a file path) it fires in one process only (`first_time`)."""

    def __init__(self, hook: str, sent: str = "SIGTERM", stage: str | None = None, once: str | None = None) -> None:
        self.sent, self.stage, self.once = signal.Signals[sent], stage, once
        setattr(self, hook, self._send)

    def _send(self, trainer, *args, **kwargs) -> None:
        if self.stage in (None, trainer.state.fn) and first_time(self.once):
            self.stage = "never"
            os.kill(os.getpid(), self.sent)


class TermWhileLoading(SyntheticDataModule):
    """Synthetic data that sends SIGTERM to this process while it loads (in one process only, `first_time`)."""

    def __init__(self, once: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.once = once

    def load(self):
        if first_time(self.once):
            os.kill(os.getpid(), signal.SIGTERM)
        return super().load()
