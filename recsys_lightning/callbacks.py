"""Lightning callbacks of our own, listed in conf/callbacks/default.yaml."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Annotated, Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Timer, TQDMProgressBar

from recsys_lightning.errors import ConfigError, TrainingDiverged
from recsys_lightning.progress import DEFAULT_INTERVAL_SECONDS, ProgressClock
from recsys_lightning.ranges import Range

log = logging.getLogger(__name__)


class TrainingTime(pl.Callback):
    """Seconds spent in `fit`, summed over every resume: the total travels in each checkpoint."""

    def __init__(self) -> None:
        self.before_this_process = 0.0
        self.started: float | None = None
        self.training_began = False

    @property
    def seconds(self) -> float:
        running = time.perf_counter() - self.started if self.started is not None else 0.0
        return self.before_this_process + running

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # Lightning restores a resumed checkpoint's loops, optimizer and callbacks before this hook:
        # an error before it is a checkpoint that could not be restored.
        self.training_began = True

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.before_this_process, self.started = self.seconds, None

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        seconds = state_dict.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
            raise ConfigError(
                f"the resumed checkpoint records {str(seconds)[:40]} training seconds, not a finite number >= 0; "
                "the file was altered, resume from another checkpoint"
            )
        self.before_this_process = float(seconds)


class NonFiniteLossGuard(pl.Callback):
    """Stops training at a NaN or infinite loss, before that epoch's validation can checkpoint the
    broken weights, naming the step and the last good checkpoint.

    The first bad step is recorded on the device (no host sync per step) and read every
    `check_every` steps and at the end of each epoch.
    """

    def __init__(self, check_every: Annotated[int, Range(1)] = 50) -> None:
        self.check_every = check_every

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=module.device)
        self.first_bad_loss = torch.zeros((), device=module.device)

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):  # None (or {}) when training_step skipped the batch: nothing to check
            loss = loss.detach()
            first_bad = (self.first_bad_step < 0) & ~torch.isfinite(loss)
            self.first_bad_step = torch.where(first_bad, batch_idx, self.first_bad_step)
            self.first_bad_loss = torch.where(first_bad, loss, self.first_bad_loss)
        last_of_epoch = batch_idx + 1 == trainer.num_training_batches
        if ((batch_idx + 1) % self.check_every == 0 or last_of_epoch) and self.first_bad_step >= 0:
            self._stop(trainer, batch_idx)

    def _stop(self, trainer: pl.Trainer, batch_idx: int) -> None:
        written = [callback.last_model_path or callback.best_model_path for callback in trainer.checkpoint_callbacks]
        kept = max((path for path in written if path and os.path.exists(path)), key=os.path.getmtime, default="")
        bad_batch = int(self.first_bad_step)
        global_step = trainer.global_step - 1 - (batch_idx - bad_batch)  # global_step already counts this batch
        raise TrainingDiverged(
            f"the loss became {self.first_bad_loss.item()} at epoch {trainer.current_epoch}, batch {bad_batch} "
            f"(global step {global_step}); training stopped"
            + (f" and the last good checkpoint {kept} is kept" if kept else " before any checkpoint was written")
            + ". Lower optimizer.lr, set trainer.gradient_clip_val (e.g. 1.0) or raise loss.l2"
        )


class Throughput(pl.Callback):
    """Logs `train/samples_per_second` once per epoch: training pairs over the epoch's wall time.

    A run resumed from a checkpoint written at a validation's end (check_val_every_n_epoch > 1) starts by
    ending that epoch, with no epoch start and no batch in this process: nothing to log then.
    """

    def __init__(self) -> None:
        self.started: float | None = None
        self.samples = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.started, self.samples = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.samples += len(batch)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.started is not None:
            module.log("train/samples_per_second", self.samples / (time.perf_counter() - self.started), sync_dist=True)
        self.started = None


class EpochLog(pl.Callback):
    """One line per epoch in the run's log (train.log, and the console): epoch, train loss, the monitored
    metric when the epoch validated, seconds, and how many of them validation took (ranking the whole
    catalogue can cost more than the epoch's training; `data.val_users` and `data.eval_chunk_size` are
    the knobs). A run's progress stays readable in a file, where a progress bar is off (TerminalProgressBar).

    A line is written when the next epoch starts (or fit ends): Lightning hands an epoch's loss and
    validation metrics to the trainer only after the callbacks' own epoch-end hooks have run.
    """

    def __init__(self, monitor: str = "val/ndcg@10") -> None:
        self.monitor = monitor
        self._epoch: int | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._write(trainer)
        self._epoch, self._started, self._validated = trainer.current_epoch, time.perf_counter(), False
        self._validation_seconds = 0.0

    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._validation_started = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self._epoch is not None:
            self._validated = True
            self._validation_seconds += time.perf_counter() - self._validation_started

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._write(trainer)

    def _write(self, trainer: pl.Trainer) -> None:
        if self._epoch is None or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        parts = [f"epoch {self._epoch}"]
        if "train/loss" in metrics:
            parts.append(f"train/loss {float(metrics['train/loss']):.4f}")
        if self._validated and self.monitor in metrics:
            parts.append(f"{self.monitor} {float(metrics[self.monitor]):.4f}")
        seconds = f"{time.perf_counter() - self._started:.1f} s"
        if self._validated:
            shown = f"{self._validation_seconds:.1f}" if self._validation_seconds >= 0.1 else f"{self._validation_seconds:.2f}"
            seconds += f" (validation {shown} s)"  # ML-100K validates in hundredths: not "0.0 s"
        log.info(", ".join([*parts, seconds]))
        self._epoch = None


class TerminalProgressBar(TQDMProgressBar):
    """Lightning's progress bar in a terminal, off when stderr is a file or a pipe: there every refresh
    becomes a line (125 KB for a 20 s run), and EpochLog's lines say the same once per epoch."""

    def __init__(self, refresh_rate: Annotated[int, Range(0)] = 5, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate if sys.stderr.isatty() else 0, **kwargs)


class ProgressLog(pl.Callback):
    """A progress line every `interval_seconds` while training, validating or testing, when stdout is not a
    terminal (CI, nohup, a scheduler's log): there the progress bar is off and EpochLog writes only when an
    epoch ends, so an hour-long epoch would otherwise be silent. Each line says the epoch, the step (or the
    user chunk ranked), pairs (or users) per second, and the time left to the stage's end at the pace so
    far. In a terminal the progress bar shows the same; 0 turns the lines off. One clock read per batch,
    nothing per sample; the lines and their timing are progress.ProgressClock's, as while data is built.
    """

    def __init__(self, interval_seconds: Annotated[float, Range(0)] = DEFAULT_INTERVAL_SECONDS) -> None:
        self.interval_seconds = interval_seconds
        self.clock = ProgressClock(0)
        self._counted = 0

    def setup(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        self.clock = ProgressClock(self.interval_seconds)  # off on DDP ranks other than 0: progress.reporting

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._counted += len(batch)
        if self.clock.due():
            steps = trainer.num_training_batches
            where = f"epoch {trainer.current_epoch}: step {batch_idx + 1} of {steps} (global step {trainer.global_step})"
            self.clock.report(where, batch_idx + 1, steps, "the epoch's end", self._counted, "pairs")

    def on_validation_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start()

    def on_validation_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        where = f"epoch {trainer.current_epoch} validation" if trainer.state.fn == "fit" else "validation"
        self._ranking_chunk_end(where, batch, batch_idx, trainer.num_val_batches[dataloader_idx])

    def on_test_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start()

    def on_test_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._ranking_chunk_end("test", batch, batch_idx, trainer.num_test_batches[dataloader_idx])

    def _ranking_chunk_end(self, where: str, chunk: Any, batch_idx: int, chunks: float) -> None:
        self._counted += len(chunk.users)
        if self.clock.due():
            self.clock.report(f"{where}: user chunk {batch_idx + 1} of {chunks}", batch_idx + 1, chunks, "its end", self._counted, "users")

    def _start(self) -> None:
        self.clock.start()
        self._counted = 0


class FinalValidation(pl.Callback):
    """Validates (and so checkpoints) the last training step, whatever ends training there: the last
    epoch, `trainer.max_steps`, `trainer.max_time` or a closed-form fit, even between the validations
    `trainer.check_val_every_n_epoch` asks for. A run that ends is then always judged and checkpointed
    at its end: `best_checkpoint` and `last.ckpt` exist, and the best is picked over every weight trained.

    Lightning validates on a batch only in a validation epoch; a stop request (`should_stop`) makes it
    validate at once. So on the final batch this opens the epoch for validation and requests the stop,
    which is where training ends anyway. The Timer that enforces max_time must run before this callback
    (`final_validation_callbacks`), so that its stop request is seen here.
    """

    def __init__(self) -> None:
        self._every_n_epochs: int | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        last_epoch = trainer.max_epochs is not None and trainer.max_epochs >= 0 and trainer.current_epoch + 1 >= trainer.max_epochs
        steps_done = trainer.max_steps is not None and trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps
        if trainer.should_stop or steps_done or (last_epoch and batch_idx + 1 >= trainer.num_training_batches):
            if trainer.check_val_every_n_epoch is not None and self._every_n_epochs is None:
                self._every_n_epochs = trainer.check_val_every_n_epoch
                trainer.check_val_every_n_epoch = 1
            trainer.should_stop = True

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._restore(trainer)  # training went on (trainer.min_epochs not reached): the user's schedule again

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._restore(trainer)

    def _restore(self, trainer: pl.Trainer) -> None:
        """Not at the epoch's end: the checkpoint callbacks, which run last, decide there whether to save
        by the same `check_val_every_n_epoch` that made this epoch validate."""
        if self._every_n_epochs is not None:
            trainer.check_val_every_n_epoch, self._every_n_epochs = self._every_n_epochs, None


def final_validation_callbacks(max_time: Any) -> list[pl.Callback]:
    """FinalValidation, after the Timer that enforces `trainer.max_time` (the trainer must then get
    max_time=None): Lightning would append its own Timer after every callback, and its stop request
    would come too late for FinalValidation to see it."""
    timer = [Timer(duration=max_time, interval="step")] if max_time is not None else []
    return [*timer, FinalValidation()]
