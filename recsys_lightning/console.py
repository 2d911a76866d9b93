"""What a run prints: library noise the user cannot act on is dropped, and a run ends with a short table.

The table is the last thing a run prints (metrics.json keeps every figure): the judged metric, NDCG and
recall at the first cut-off, for validation and test, the best epoch, the training time, the run folder
and the command that opens it in TensorBoard.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Lightning's advertisement, its seed echo (a derived seed, not the user's), and accelerators the machine
# lacks (a GPU it has but does not use is still announced: that one a user can act on).
_NOISE = ("💡 Tip:", "Seed set to", "GPU available: False, used: False", "TPU available: False", "HPU available: False")
# What Lightning announces each time it loads a checkpoint: worth a line when a run resumes, not for
# the validation and test of the best checkpoint after fit, which the closing table reports.
_RESTORES = ("Restoring states from the checkpoint path", "Loaded model weights from the checkpoint")
_LIGHTNING = "pytorch_lightning.utilities.rank_zero"
# Said when fit reaches max_epochs, before the line for the last epoch (EpochLog writes that when fit ends).
_FIT_STOPPED = ("`Trainer.fit` stopped",)
# A resumed run's checkpoint folder holds the run's own checkpoints: nothing a user need act on.
_FOLDER_NOT_EMPTY = r"Checkpoint directory .* exists and is not empty"


class _DropNoise(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...] = _NOISE) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


class _HoldBack(_DropNoise):
    """Keeps the records it drops, to be handled later."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__(prefixes)
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if super().filter(record):
            return True
        self.held.append(record)
        return False


def quiet_library_noise() -> None:
    """Once per process, before a Trainer exists. torch's LeafSpec deprecation fires inside Lightning on
    every fit (a library-internal call, nothing a user can change)."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Optuna's storage layer: "setup plugin ..." x 7 per sweep
    if not sys.stderr.isatty():  # Optuna's colorlog formatter colours whatever the stream: raw codes in a log file
        os.environ.setdefault("NO_COLOR", "1")
    for name in (_LIGHTNING, "lightning_fabric.utilities.seed"):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _DropNoise) for existing in logger.filters):
            logger.addFilter(_DropNoise())


@contextmanager
def without_restore_messages() -> Iterator[None]:
    """Around validating and testing the best checkpoint after fit."""
    restores = _DropNoise(_RESTORES)
    logging.getLogger(_LIGHTNING).addFilter(restores)
    try:
        yield
    finally:
        logging.getLogger(_LIGHTNING).removeFilter(restores)


@contextmanager
def fit_messages(resuming: bool) -> Iterator[None]:
    """Around `trainer.fit`: Lightning's "`Trainer.fit` stopped: `max_epochs=N` reached." comes after the
    last epoch's line, not before it, and a resumed run (`resuming`) is not told that its own checkpoint
    folder "exists and is not empty"."""
    logger = logging.getLogger(_LIGHTNING)
    stopped = _HoldBack(_FIT_STOPPED)
    logger.addFilter(stopped)
    try:
        if resuming:  # only then: leaving catch_warnings lets warnings Python showed once in fit show again
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_FOLDER_NOT_EMPTY)
                yield
        else:
            yield
    finally:
        logger.removeFilter(stopped)
        for record in stopped.held:
            logger.handle(record)


def run_summary(
    metrics: Mapping[str, Any], monitor: str, ks: Sequence[int], run_dir: str | Path, tensorboard: bool, note: str | None = None
) -> str:
    """The closing table of a run: rows for the monitored metric and NDCG/recall at the first K, which items
    were ranked when not the whole catalogue (metrics' `eval_candidates`), a `note`
    when the run learnt too little (baseline_note.py), the run folder, and the command that opens it in
    TensorBoard when the run logged there (`tensorboard=False` for a sweep's job too: the sweep ends with
    the command for all its jobs)."""
    names = list(dict.fromkeys([monitor.removeprefix("val/"), f"ndcg@{ks[0]}", f"recall@{ks[0]}"]))
    rows = [name for name in names if f"val/{name}" in metrics or f"test/{name}" in metrics]
    width = max(len(name) for name in rows)

    def shown(key: str) -> str:
        value = metrics.get(key)
        return f"{value:>8.4f}" if isinstance(value, (int, float)) else f"{'-':>8}"

    lines = [f"{'':{width}}  {'val':>8}  {'test':>8}"]
    lines += [f"{name:{width}}  {shown('val/' + name)}  {shown('test/' + name)}" for name in rows]
    if metrics.get("eval_candidates") == "cold":
        lines.append("ranked: each part's new items only (eval.candidates=cold), not the whole catalogue")
    lines.append(f"best epoch {metrics.get('best_epoch')} of {metrics.get('epochs')}, {metrics.get('train_seconds')} s training")
    if note:
        lines.append(note)
    folder = relative_path(run_dir)
    lines.append(f"run folder: {folder}")
    if tensorboard:
        lines.append(f"next: {tensorboard_command(run_dir)}")
    return "\n".join(lines)


def tensorboard_command(logdir: str | Path) -> str:
    """The command that opens `logdir` in TensorBoard, from the working directory, quoted for a shell (a
    hydra.run.dir a user chose may hold spaces or glob characters)."""
    return f"{shlex.quote(relative_path(Path(sys.executable).parent / 'tensorboard'))} --logdir {shlex.quote(relative_path(logdir))}"


def relative_path(path: str | Path) -> str:
    """Relative to the working directory when inside it: what a user would type."""
    absolute = Path(path).absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return os.fspath(absolute)
