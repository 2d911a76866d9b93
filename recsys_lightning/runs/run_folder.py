"""One training run per folder: a fresh run never writes into a folder that already holds a run, two
processes never write one folder at once, and a resumed run starts from a checkpoint that was checked.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import IO, Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from recsys_lightning.errors import ConfigError, RecsysError, exit_with_message, first_line
from recsys_lightning.runs.atomic import check_writable_folder
from recsys_lightning.runs.checkpoint_file import load_checkpoint
from recsys_lightning.runs.resume import check_resumable
from recsys_lightning.runs.resume_command import check_sweep_resume
from recsys_lightning.validation import check_folder_path, config_value

LOCK_NAME = ".run.lock"
HYDRA_RECORD = ".hydra"
RECORD_BACKUP = "before-resume"
# Where launchers put a process's global rank (Lightning reads the same variables, in this order).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
CHECKPOINT_DIR = "checkpoints"
LAST = "last"


def is_rank_zero() -> bool:
    """True in the process that owns the run folder: the only one, or global rank 0 under DDP."""
    rank = next((os.environ[name] for name in RANK_VARIABLES if name in os.environ), "0")
    return rank.strip() in ("", "0")


class RunFolder:
    """The folder Hydra gave this run: `claim` it before writing anything, `release` it at the end.

    The lock is an advisory `flock` on `.run.lock`: the kernel drops it when the process dies, even
    by SIGKILL, so a crashed run never leaves its folder locked. A run that ends in any way that lets
    code run removes the file (only a killed one leaves it, still unlocked). Under DDP only global rank 0
    claims the folder; the other ranks write into the folder it holds.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / CHECKPOINT_DIR
        self._lock: IO[str] | None = None

    def claim(self, resuming: bool) -> None:
        """Take the lock; without `resuming`, refuse a folder that already holds checkpoints or metrics."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = self._locked_file()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._lock = handle
        if not resuming:
            earlier = self.earlier_results()
            if earlier:
                self.release()
                raise ConfigError(
                    f"{self.path}: already holds a run ({', '.join(earlier)}); resume it with ckpt_path=last, "
                    "or start fresh in another folder (drop hydra.run.dir or pick a new one)"
                )

    def _locked_file(self) -> IO[str]:
        """`.run.lock` opened and locked. A holder removes the file before it unlocks, so a lock taken on a
        file that is no longer the one at that path (removed meanwhile) is let go and taken again."""
        while True:
            handle = open(self.path / LOCK_NAME, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise ConfigError(
                    f"{self.path}: {holder} is training into this folder right now; wait for it, or give this run "
                    "its own folder: another hydra.run.dir, or (the same command started twice within one second "
                    "gets one folder name) start it again a second later"
                ) from None
            try:
                if os.path.samestat(os.stat(self.path / LOCK_NAME), os.fstat(handle.fileno())):
                    return handle
            except FileNotFoundError:
                pass
            handle.close()

    def release(self) -> None:
        """Remove `.run.lock` and let go of the lock (in that order: see `_locked_file`)."""
        if self._lock is not None:
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def earlier_results(self) -> list[str]:
        """What an earlier run left here: metrics.json and checkpoint files, as paths relative to the folder."""
        found = [self.path / "metrics.json"] if (self.path / "metrics.json").exists() else []
        found += sorted(self.checkpoints.glob("*.ckpt")) if self.checkpoints.is_dir() else []
        return [str(path.relative_to(self.path)) for path in found[:4]] + ([f"{len(found) - 4} more"] if len(found) > 4 else [])

    def resumes_in_place(self, ckpt_path: str | None) -> bool:
        """Whether `ckpt_path` continues this folder's own run (`last`, or one of its checkpoints).

        A checkpoint from elsewhere starts this folder's history, so the folder must be free like a fresh run's.
        """
        if ckpt_path is None:
            return False
        return ckpt_path == LAST or Path(ckpt_path).expanduser().resolve().parent == self.checkpoints.resolve()

    def existing_checkpoint(self, ckpt_path: str) -> Path:
        """The file `ckpt_path` names (`last`: this folder's checkpoints/last.ckpt); an error if there is none."""
        path = self.checkpoints / f"{LAST}.ckpt" if ckpt_path == LAST else Path(ckpt_path).expanduser()
        if ckpt_path.strip() == "":
            raise ConfigError("ckpt_path is empty: give last, or the path of a .ckpt file, or drop ckpt_path to start fresh")
        if path.exists() and not path.is_file():
            kind = "a folder" if path.is_dir() else "not a regular file"
            raise ConfigError(
                f"ckpt_path={ckpt_path}: {path} is {kind}; give the path of a .ckpt file (or last){self._readable_hint(path)}"
            )
        if not path.is_file():
            hint = "; nothing to resume here, drop ckpt_path to start fresh" if ckpt_path == LAST else ""
            raise ConfigError(f"ckpt_path={ckpt_path}: {path} does not exist{hint}{self._readable_hint(path)}")
        return path

    def back_up_record(self) -> None:
        """Keep `.hydra/`'s files aside before Hydra rewrites them for a resume that may yet be refused."""
        backup = self.path / HYDRA_RECORD / RECORD_BACKUP
        try:
            if backup.is_dir() and not backup.is_symlink():
                shutil.rmtree(backup)  # left by a run that crashed between backup and restore
            elif backup.exists() or backup.is_symlink():
                backup.unlink()
            for path in sorted((self.path / HYDRA_RECORD).glob("*.yaml")):
                backup.mkdir(exist_ok=True)
                shutil.copy2(path, backup / path.name)
        except OSError as error:
            raise ConfigError(
                f"{backup}: cannot keep the run's record aside before resuming ({first_line(error, 120)}); check the folder's permissions"
            ) from error

    def restore_record(self) -> None:
        """Put back the files `back_up_record` kept: the refused resume leaves the record as it was."""
        backup = self.path / HYDRA_RECORD / RECORD_BACKUP
        if is_rank_zero() and backup.is_dir():
            for path in backup.glob("*.yaml"):
                os.replace(path, self.path / HYDRA_RECORD / path.name)
            shutil.rmtree(backup, ignore_errors=True)

    def drop_record_backup(self) -> None:
        """The resume was accepted: the new record stands."""
        if is_rank_zero():
            shutil.rmtree(self.path / HYDRA_RECORD / RECORD_BACKUP, ignore_errors=True)

    def check_free(self, resuming: bool) -> None:
        """`claim` and let go at once: used before Hydra writes `.hydra/` into the folder, so a refused
        run leaves the folder's record of the earlier run as it was."""
        self.claim(resuming)
        self.release()

    def resume_checkpoint(self, ckpt_path: str) -> tuple[Path, dict[str, Any]]:
        """`last` (this folder's checkpoints/last.ckpt) or a path, loaded as plain data and checked to be
        a resumable training checkpoint whose records name no file outside its own folder.

        A damaged checkpoint (a crash or a full disk mid-write) is refused with the readable ones listed.
        """
        path = self.existing_checkpoint(ckpt_path)
        try:
            checkpoint = load_checkpoint(path)
            check_resumable(checkpoint, path)
        except ConfigError as error:
            raise ConfigError(f"ckpt_path={ckpt_path}: {first_line(error, 300)}{self._readable_hint(path)}") from error
        return path.resolve(), checkpoint

    def _readable_hint(self, damaged: Path) -> str:
        """The newest checkpoint of this folder that loads, if any, as a ready-to-use override."""
        candidates = (
            sorted(self.checkpoints.glob("*.ckpt"), key=lambda path: path.stat().st_mtime, reverse=True)
            if self.checkpoints.is_dir()
            else []
        )
        for candidate in candidates:
            if candidate.resolve() == damaged.resolve():
                continue
            try:
                checkpoint = load_checkpoint(candidate)
                check_resumable(checkpoint, candidate)
            except ConfigError:
                continue
            epoch = checkpoint["epoch"]
            return f"; the newest readable checkpoint here is {candidate} (epoch {epoch}): resume with ckpt_path={candidate}"
        return ""


class RunFolderCheck(Callback):
    """Checks that run before Hydra makes the run folder and writes `.hydra/` into it (listed in
    conf/hydra/default.yaml): a file in the folder's place would end in Hydra's own traceback, and a
    refused run must leave the record of the run already in the folder as it was."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")
        if is_rank_zero():
            folder = RunFolder(config_value(config, "hydra.run.dir"))
            ckpt_path = config.get("ckpt_path")
            try:
                if ckpt_path is not None:
                    folder.existing_checkpoint(str(ckpt_path))
                resuming = folder.resumes_in_place(ckpt_path)
                folder.check_free(resuming=resuming)
            except RecsysError as error:
                exit_with_message(error)
            if resuming:
                try:
                    folder.back_up_record()
                except RecsysError as error:
                    exit_with_message(error)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A sweep into a folder that holds a sweep's runs only resumes it (ckpt_path=last, its overrides)."""
        self._check(config, "hydra.sweep.dir")
        sweep_dir = Path(config_value(config, "hydra.sweep.dir"))
        try:
            if config.get("ckpt_path") == LAST:
                check_sweep_resume(sweep_dir, list(config.hydra.overrides.task), list(config.hydra.overrides.hydra))
                for record in sorted(sweep_dir.glob(f"*/{HYDRA_RECORD}")):  # before Hydra rewrites each job's record
                    RunFolder(record.parent).back_up_record()
                return
            earlier = sorted(
                {path.parent.name for path in sweep_dir.glob("*/metrics.json")}
                | {path.parent.parent.name for path in sweep_dir.glob("*/checkpoints/*.ckpt")}
            )
            if earlier:
                raise ConfigError(
                    f"hydra.sweep.dir={sweep_dir} already holds a sweep's runs ({', '.join(earlier[:3])}"
                    f"{', ...' if len(earlier) > 3 else ''}); give this sweep its own folder (drop hydra.sweep.dir or "
                    "pick a new one), or resume that sweep with its command plus ckpt_path=last"
                )
        except RecsysError as error:
            exit_with_message(error)

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        HydraConfig.instance().set_config(config)  # run_name reads ${hydra:runtime.choices...}; run_job sets it too
        try:
            check_folder_path(key, config_value(config, key))
            check_writable_folder(config_value(config, key), key)
        except RecsysError as error:
            exit_with_message(error)
