"""Callbacks that break a training run on purpose, added from the command line in tests:
`+callbacks.kill._target_=fault_injection.KillAt` with `PYTHONPATH=tests`."""

import os
import signal

import pytorch_lightning as pl
import torch


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
