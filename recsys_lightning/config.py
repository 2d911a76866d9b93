"""OmegaConf resolvers the configs rely on."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from recsys_lightning.monitor import loss_monitor, metric_mode, sweep_direction
from recsys_lightning.run_names import run_label

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def register_resolvers() -> None:
    """`${project_root:}` is the folder holding conf/, so runs land in the same place whatever the cwd;
    `${run_label:<task overrides>,<excluded keys>}` is `_<the overrides, shortened>` or nothing (run_names.py);
    `${job_number:n}` is n in three digits, so a sweep's job folders sort in job order up to 999;
    `${loss_monitor:<loss _target_>}`, `${metric_mode:<metric>,<loss _target_>}` and
    `${sweep_direction:<metric>,<loss _target_>}` say what a run is judged by (monitor.py)."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("job_number"):
        OmegaConf.register_new_resolver("job_number", lambda number: f"{int(number):03d}")
    if not OmegaConf.has_resolver("run_label"):
        OmegaConf.register_new_resolver("run_label", lambda overrides, excluded: run_label(list(overrides), list(excluded)))
    for name, resolver in (("loss_monitor", loss_monitor), ("metric_mode", metric_mode), ("sweep_direction", sweep_direction)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
