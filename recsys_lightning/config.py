"""OmegaConf resolvers the configs rely on."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from recsys_lightning.monitor import loss_monitor, metric_mode, sweep_direction
from recsys_lightning.run_names import run_label, safe_name

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@cache
def group_options(group: str) -> dict[str, dict[str, Any]]:
    """The options of `conf/<group>/` by name, as written (unresolved): what `group=<name>` can pick."""
    paths = sorted((PROJECT_ROOT / "conf" / group).glob("*.yaml"))
    return {path.stem: OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {} for path in paths}


def register_resolvers() -> None:
    """`${project_root:}` is the folder holding conf/, so runs land in the same place whatever the cwd;
    `${run_label:<task overrides>,<excluded keys>}` is `_<the overrides, shortened>` or nothing, and
    `${safe_name:<name>}` the name with what a folder name should not hold replaced (run_names.py);
    `${job_number:n}` is n in three digits, so a sweep's job folders sort in job order up to 999;
    `${loss_monitor:<loss _target_>}`, `${metric_mode:<metric>,<loss _target_>}` and
    `${sweep_direction:<metric>,<loss _target_>}` say what a run is judged by (monitor.py)."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("job_number"):
        OmegaConf.register_new_resolver("job_number", lambda number: f"{int(number):03d}")
    if not OmegaConf.has_resolver("run_label"):
        OmegaConf.register_new_resolver("run_label", _run_label)
    if not OmegaConf.has_resolver("safe_name"):
        OmegaConf.register_new_resolver("safe_name", safe_name)
    for name, resolver in (("loss_monitor", loss_monitor), ("metric_mode", metric_mode), ("sweep_direction", sweep_direction)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def _run_label(overrides: Any, excluded: Any) -> str:
    """The overrides as typed: resolving them would put `${oc.env:...}` values into folder names."""
    as_typed = OmegaConf.to_container(overrides, resolve=False) if OmegaConf.is_config(overrides) else overrides
    return run_label([str(override) for override in as_typed], [str(key) for key in excluded])
