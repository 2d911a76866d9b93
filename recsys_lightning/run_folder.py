"""One training run per folder: a fresh run never writes into a folder that already holds a run, two
processes never write one folder at once, and a resumed run starts from a checkpoint that was checked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from recsys_lightning.errors import ConfigError, first_line
from recsys_lightning.serving.checkpoint import load_checkpoint

LOCK_NAME = ".run.lock"
CHECKPOINT_DIR = "checkpoints"
LAST = "last"


class RunFolder:
    """The folder Hydra gave this run: `claim` it before writing anything, `release` it at the end.

    The lock is an advisory `flock` on `.run.lock`: the kernel drops it when the process dies, even
    by SIGKILL, so a crashed run never leaves its folder locked. Under DDP only global rank 0 claims
    the folder; the other ranks write into the folder it holds.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / CHECKPOINT_DIR
        self._lock: IO[str] | None = None

    def claim(self, resuming: bool) -> None:
        """Take the lock; without `resuming`, refuse a folder that already holds checkpoints or metrics."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK_NAME, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(f"{self.path}: {holder} is training into this folder right now; wait for it, "
                              "or give this run its own folder (drop hydra.run.dir or pick another)") from None  # fmt: skip
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._lock = handle
        if not resuming:
            earlier = self.earlier_results()
            if earlier:
                self.release()
                raise ConfigError(f"{self.path}: already holds a run ({', '.join(earlier)}); resume it with ckpt_path=last, "
                                  "or start fresh in another folder (drop hydra.run.dir or pick a new one)")  # fmt: skip

    def release(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def earlier_results(self) -> list[str]:
        """What an earlier run left here: metrics.json and checkpoint files, as paths relative to the folder."""
        found = [self.path / "metrics.json"] if (self.path / "metrics.json").exists() else []
        found += sorted(self.checkpoints.glob("*.ckpt")) if self.checkpoints.is_dir() else []
        return [str(path.relative_to(self.path)) for path in found[:4]] + ([f"{len(found) - 4} more"] if len(found) > 4 else [])

    def resume_checkpoint(self, ckpt_path: str) -> Path:
        """`last` (this folder's checkpoints/last.ckpt) or a path, checked to load as plain data.

        A damaged checkpoint (a crash or a full disk mid-write) is refused with the readable ones listed.
        """
        path = self.checkpoints / f"{LAST}.ckpt" if ckpt_path == LAST else Path(ckpt_path).expanduser()
        if not path.is_file():
            hint = "; nothing to resume here, drop ckpt_path to start fresh" if ckpt_path == LAST else ""
            raise ConfigError(f"ckpt_path={ckpt_path}: {path} does not exist{hint}{self._readable_hint(path)}")
        try:
            load_checkpoint(path)
        except ConfigError as error:
            raise ConfigError(f"ckpt_path={ckpt_path}: {first_line(error, 300)}{self._readable_hint(path)}") from error
        return path.resolve()

    def _readable_hint(self, damaged: Path) -> str:
        """The newest checkpoint of this folder that loads, if any, as a ready-to-use override."""
        candidates = sorted(self.checkpoints.glob("*.ckpt"), key=lambda path: path.stat().st_mtime, reverse=True) if self.checkpoints.is_dir() else []
        for candidate in candidates:
            if candidate.resolve() == damaged.resolve():
                continue
            try:
                epoch = load_checkpoint(candidate).get("epoch")
            except ConfigError:
                continue
            return f"; the newest readable checkpoint here is {candidate} (epoch {epoch}): resume with ckpt_path={candidate}"
        return ""
