"""Lightning callbacks of our own, listed in conf/callbacks/default.yaml."""

from __future__ import annotations

import math
import time
from typing import Any

import pytorch_lightning as pl

from recsys_lightning.errors import ConfigError


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
            raise ConfigError(f"the resumed checkpoint records {str(seconds)[:40]} training seconds, not a finite number >= 0; "
                              "the file was altered, resume from another checkpoint")  # fmt: skip
        self.before_this_process = float(seconds)
