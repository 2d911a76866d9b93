"""The command that resumes a stopped run, or a stopped sweep as a whole, printed when a signal stops it;
and the check that a sweep is resumed with the overrides it was started with.

It is built from the overrides Hydra recorded of the command line (a sweep's from its multirun.yaml), so
pasting it works: the folder and `ckpt_path` the user gave are replaced, not repeated, and every word is
quoted for a shell.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from recsys_lightning.console import relative_path
from recsys_lightning.errors import ConfigError, RecsysError
from recsys_lightning.runs.hydra_record import read_run_yaml

ENTRY_POINT = "recsys_lightning.train"
SWEEP_RECORD = "multirun.yaml"
# Overrides the resume command sets itself; `hydra.mode=MULTIRUN` is what `-m` records.
REPLACED_KEYS = frozenset({"ckpt_path", "hydra.run.dir", "hydra.sweep.dir", "hydra.mode"})
# Where the jobs run, not what they compute: a resumed sweep may change them (e.g. a SLURM partition).
_LAUNCHER_KEYS = ("hydra/launcher", "hydra.launcher.")


def resume_command(run_dir: str | Path, from_last: bool = True) -> str | None:
    """How to resume the run in `run_dir`, stopped by a signal (with `from_last=False`, a run stopped before
    its first checkpoint: how to start it again in the same folder); in a sweep, how to resume the whole
    sweep (its folder is the job folder's parent), whose jobs without a checkpoint run fresh. None outside a
    Hydra run, or when the record is unreadable."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        task, hydra_overrides = list(hydra.overrides.task), list(hydra.overrides.hydra)
        return command_line(task, hydra_overrides, "hydra.run.dir", Path(run_dir), sweep=False, from_last=from_last)
    sweep_dir = Path(run_dir).parent
    try:
        task, hydra_overrides = recorded_sweep_overrides(sweep_dir)
    except RecsysError:
        return None
    return command_line(task, hydra_overrides, "hydra.sweep.dir", sweep_dir, sweep=True)


def command_line(task: Sequence[str], hydra: Sequence[str], folder_key: str, folder: Path, sweep: bool, from_last: bool = True) -> str:
    """`<python> -m recsys_lightning.train [-m] <overrides> <folder_key>=<folder> [ckpt_path=last]`, quoted."""
    kept = [override for override in [*task, *hydra] if override_key(override) not in REPLACED_KEYS]
    words = [relative_path(sys.executable), "-m", ENTRY_POINT, *(["-m"] if sweep else []), *kept]
    resume = ["ckpt_path=last"] if from_last else []
    return " ".join(shlex.quote(word) for word in [*words, f"{folder_key}={relative_path(folder)}", *resume])


def override_key(override: str) -> str:
    """`model.dim` of `model.dim=8,16`, `+key=value`, `++key=value` or `~key`."""
    return override.partition("=")[0].strip().lstrip("+~")


def recorded_sweep_overrides(sweep_dir: Path) -> tuple[list[str], list[str]]:
    """The task and hydra overrides the sweep in `sweep_dir` was started with, from Hydra's multirun.yaml
    (read as untrusted: plain YAML, whose hydra.overrides.task and .hydra are lists of strings)."""
    path = sweep_dir / SWEEP_RECORD
    if not path.is_file():
        raise ConfigError(
            f"hydra.sweep.dir={relative_path(sweep_dir)} holds no sweep to resume (no {SWEEP_RECORD}); point hydra.sweep.dir "
            "at the stopped sweep's folder, or drop ckpt_path=last to start a new sweep"
        )
    hydra = OmegaConf.to_container(read_run_yaml(path), resolve=False).get("hydra")  # plain data: nothing resolved
    overrides = hydra.get("overrides") if isinstance(hydra, dict) else None
    lists = [overrides.get(part) if isinstance(overrides, dict) else None for part in ("task", "hydra")]
    if not all(isinstance(found, list) and all(isinstance(item, str) for item in found) for found in lists):
        raise ConfigError(f"{path}: holds no hydra.overrides.task and .hydra lists of strings; the sweep's record is damaged")
    return [str(item) for item in lists[0]], [str(item) for item in lists[1]]


def check_sweep_resume(sweep_dir: Path, task: list[str], hydra: list[str]) -> None:
    """A sweep resumes only with the overrides it was started with, in the same order: Hydra numbers the
    jobs in that order and names each job's folder after its number and overrides, so anything else
    would resume jobs in the wrong folders."""
    recorded_task, recorded_hydra = recorded_sweep_overrides(sweep_dir)
    recorded, given = _compared([*recorded_task, *recorded_hydra]), _compared([*task, *hydra])
    if recorded == given:
        return
    missing, extra = [o for o in recorded if o not in given], [o for o in given if o not in recorded]
    difference = (
        f"it has {' '.join(missing) or 'nothing more'}, this command {' '.join(extra) or 'nothing more'}"
        if missing or extra
        else "the same overrides in another order, which numbers its jobs otherwise"
    )
    command = command_line(recorded_task, recorded_hydra, "hydra.sweep.dir", sweep_dir, sweep=True)
    raise ConfigError(
        f"hydra.sweep.dir={relative_path(sweep_dir)}: the sweep there was started with other overrides "
        f"({SWEEP_RECORD}: {difference[:300]}); resume it with: {command}"
    )


def _compared(overrides: list[str]) -> list[str]:
    return [
        override
        for override in overrides
        if override_key(override) not in REPLACED_KEYS and not override_key(override).startswith(_LAUNCHER_KEYS)
    ]
