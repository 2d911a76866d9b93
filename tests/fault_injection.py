"""Callbacks that break a training run on purpose, added from the command line in tests:
`+callbacks.kill._target_=fault_injection.KillAt` with `PYTHONPATH=tests`."""

import os
import signal

import pytorch_lightning as pl
import torch

from recsys_lightning.data.synthetic import SyntheticDataModule


class SignalAt(pl.Callback):
    """Send the signal `sent` to this process at the start of one batch."""

    sent: signal.Signals

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
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

    With `once` (a file path) it fires in one process only, so the command a stopped run prints can be
    pasted as printed and resume without being stopped again."""

    def __init__(self, hook: str, sent: str = "SIGTERM", stage: str | None = None, once: str | None = None) -> None:
        self.sent, self.stage, self.once = signal.Signals[sent], stage, once
        setattr(self, hook, self._send)

    def _send(self, trainer, *args, **kwargs) -> None:
        if self.stage not in (None, trainer.state.fn):
            return
        if self.once is not None:
            if os.path.exists(self.once):
                return
            open(self.once, "w").close()
        self.stage = "never"
        os.kill(os.getpid(), self.sent)


class TermWhileLoading(SyntheticDataModule):
    """Synthetic data that sends SIGTERM to this process while it loads (once per `once` file, as SignalAtHook)."""

    def __init__(self, once: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.once = once

    def load(self):
        if not os.path.exists(self.once):
            open(self.once, "w").close()
            os.kill(os.getpid(), signal.SIGTERM)
        return super().load()
