"""A sweep's folder as a whole: the Hydra callback that tabulates a multirun (one row per run, best first on
the sweep's optimized_metric: validation NDCG@10 by default, RMSE lowest first for loss=mse), and which
jobs of a resumed sweep (`-m <its overrides> hydra.sweep.dir=<its folder> ckpt_path=last`, its overrides checked
by runs/resume_command.py) are kept: finished jobs kept, the others resumed or run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from recsys_lightning.console import tensorboard_command
from recsys_lightning.errors import ConfigError
from recsys_lightning.metrics import SWEEP_KS, summary_metrics
from recsys_lightning.monitor import metric_mode
from recsys_lightning.runs.atomic import atomic_file
from recsys_lightning.runs.checkpoint_file import BEST_CHECKPOINT_KEY, read_run_metrics
from recsys_lightning.runs.resume_command import override_key

log = logging.getLogger(__name__)

SORT_BY = "val/ndcg@10"
RESUME = "last"
# The summary's columns: the metrics named where every table comparing runs takes them, at one cut-off.
COLUMNS = ["run", "overrides", *summary_metrics(SWEEP_KS, test_detail=True), "best_epoch", "train_seconds", "error"]


def summarise_sweep(sweep_dir: Path, sort_by: str = SORT_BY, ascending: bool = False) -> pd.DataFrame:
    """Read every job folder under `sweep_dir` (metrics.json or error.txt) into one table sorted by
    `sort_by` (a column of its own when COLUMNS lacks it), failures last."""
    rows: list[dict[str, Any]] = []
    for hydra_dir in sorted(sweep_dir.glob("*/.hydra"), key=lambda path: _job_number(path.parent)):
        run_dir = hydra_dir.parent
        overrides = OmegaConf.load(hydra_dir / "overrides.yaml") if (hydra_dir / "overrides.yaml").is_file() else []
        shown = [override for override in overrides if override_key(str(override)) != "ckpt_path"]  # a resume's, not the run's
        row: dict[str, Any] = {"run": run_dir.name, "overrides": " ".join(shown)}
        if (run_dir / "metrics.json").is_file():
            try:
                row.update(read_run_metrics(run_dir))
            except ConfigError as error:
                row["error"] = str(error)
        elif (run_dir / "error.txt").is_file():
            row["error"] = (run_dir / "error.txt").read_text().strip()
        else:
            row["error"] = "no metrics.json: the run is running or did not finish"
        rows.append(row)
    columns = COLUMNS if sort_by in COLUMNS else [*COLUMNS[:2], sort_by, *COLUMNS[2:]]
    table = pd.DataFrame(rows).reindex(columns=columns).astype({"best_epoch": "Int64"})
    return table.sort_values(sort_by, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    shown = table.dropna(axis=1, how="all")
    cell = lambda value: "" if pd.isna(value) else (f"{value:.4f}" if isinstance(value, float) else str(value))  # noqa: E731
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Writes summary.csv and summary.md in the sweep folder as each job starts and ends, and at the end
    prints the table and exits 1 if a run failed.

    Written at every job boundary, a summary outlives a sweep stopped midway (Ctrl-C, SIGTERM, even
    SIGKILL, none of which reach `on_multirun_end`): it holds every job that finished, and the job that
    was running as a row that did not finish. The order is the sweep's own (its optimized_metric and
    loss, read once at the start), so a job of another loss does not re-sort it."""

    def __init__(self) -> None:
        self.order: tuple[str, bool] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.order = _sort_order(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._update(config)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        self._update(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = write_summary(sweep_dir, *_sort_order(config))
        markdown = to_markdown(table)
        print(f"\nSweep summary ({sweep_dir / 'summary.md'}):\n{markdown}")
        if any(sweep_dir.glob("*/events.out.tfevents.*")):
            print(f"next: {tensorboard_command(sweep_dir)}   (HParams tab: one row per run)")
        failed = int(table["error"].notna().sum())
        if failed:
            log.error("%d of %d runs failed; see the error column", failed, len(table))
            raise SystemExit(1)

    def _update(self, config: DictConfig) -> None:
        """The summary as it stands; a summary that cannot be written must not stop the sweep. Hydra calls the job
        hooks in a single run too, where no sweep started (no `order`) and nothing is written."""
        if self.order is None:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            write_summary(sweep_dir, *self.order)
        except OSError as error:
            log.warning("%s: the summary could not be updated (%s); the sweep goes on", sweep_dir, error.strerror or error)


def write_summary(sweep_dir: Path, sort_by: str, ascending: bool) -> pd.DataFrame:
    """summary.csv and summary.md of the jobs under `sweep_dir` as they stand, each written whole or not at all
    (the jobs of a parallel launcher may write at once); returns the table."""
    table = summarise_sweep(sweep_dir, sort_by, ascending)
    with atomic_file(sweep_dir / "summary.csv") as handle:
        table.to_csv(handle, index=False)
    with atomic_file(sweep_dir / "summary.md") as handle:
        handle.write(to_markdown(table))
    return table


def _sort_order(config: DictConfig) -> tuple[str, bool]:
    """The sweep's optimized_metric (val/ndcg@10 when unset), and whether lower is better for it."""
    sort_by = config.get("optimized_metric") or SORT_BY
    return sort_by, metric_mode(sort_by, config.loss._target_) == "min"


def _job_number(run_dir: Path) -> int:
    head = run_dir.name.split("_", 1)[0]
    return int(head) if head.isdigit() else -1


def resuming_sweep(ckpt_path: Any) -> bool:
    """Whether this job belongs to a sweep resumed as a whole (`-m ... ckpt_path=last`)."""
    return ckpt_path == RESUME and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def kept_job_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The metrics of a job that finished before its sweep was stopped, kept as they are; None for a job to
    run (again): its metrics.json is missing, damaged, or names no best checkpoint that exists."""
    try:
        metrics = read_run_metrics(run_dir)
    except ConfigError as error:
        log.warning("%s; the job runs again", error)
        return None
    best = metrics.get(BEST_CHECKPOINT_KEY)
    return metrics if best and (run_dir / best).is_file() else None
