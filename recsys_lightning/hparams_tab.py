"""TensorBoard's HParams tab as one sortable table over the runs of a sweep: a row per run, the same columns
in every run.

The tab takes its columns from the first run it finds that declares them, so every run declares the same
ones, whatever its config: the chosen model, loss, sampler, optimizer, scheduler, data and experiment, the
seed and the few keys users sweep, and every number, flag or list that an option of `conf/model/`,
`conf/loss/` or `conf/sampler/` offers (a new model's YAML adds its keys, no code). A key the run's option
lacks is "-" in a text column; a number or flag column is left empty (TensorBoard sorts empty cells last,
where a NaN would break its sort and a 0 would be a value). The metric columns are the final figures a run
can have: NDCG and recall at the usual cut-offs (a run's other `eval.ks` are in its scalars, not columns),
the prediction metrics of pointwise and rating losses, the best epoch, the epochs run and the training time.

TensorBoard keeps the first row a run folder declares, so a run resumed in place keeps its first
session's hyperparameters (a resume may change none of these) and shows its latest metrics. The full
config stays in the run's `.hydra/`; this table is for comparing runs, not for restoring one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import PurePath
from typing import Any, Literal

from google.protobuf import struct_pb2
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

from recsys_lightning.config import group_options
from recsys_lightning.metrics import HPARAMS_KS, summary_metrics
from recsys_lightning.models.closed_form import ClosedFormRecommender

Kind = Literal["number", "text", "flag"]
ABSENT_TEXT = "-"
CHOICE_GROUPS = ("model", "loss", "sampler", "optimizer", "scheduler", "data", "experiment")
# Keys of the composed config that every run has and users sweep, besides the options' own keys.
RUN_KEYS: tuple[tuple[str, Kind], ...] = (
    ("seed", "number"),
    ("optimizer.lr", "number"),
    ("optimizer.weight_decay", "number"),
    ("data.batch_size", "number"),
    ("data.split", "text"),
    ("eval.ks", "text"),
    ("eval.candidates", "text"),
)
OPTION_GROUPS = ("model", "loss", "sampler")
# Option keys that describe how a run is computed, not what is learnt (memory guards, retries, the
# gradient layout the optimizer column already says).
NOT_COLUMNS = frozenset({"max_items", "max_rounds", "sparse_gradients", "run_dir"})
# What a closed-form model (popularity, item-kNN, EASE) does not use; its loss still picks the metrics.
UNUSED_IN_CLOSED_FORM = frozenset({"optimizer", "scheduler", "sampler", "loss"})
RUN_FIGURES = ("best_epoch", "epochs", "train_seconds")
_TYPES = {"number": api_pb2.DATA_TYPE_FLOAT64, "text": api_pb2.DATA_TYPE_STRING, "flag": api_pb2.DATA_TYPE_BOOL}


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind


@cache
def hparam_columns() -> tuple[Column, ...]:
    """The table's hyperparameter columns: fixed by the code and conf/, never by the run."""
    columns = [Column(group, "text") for group in CHOICE_GROUPS] + [Column(name, kind) for name, kind in RUN_KEYS]
    for group in OPTION_GROUPS:
        kinds: dict[str, Kind] = {}
        for option in group_options(group).values():
            for key, value in option.items():
                kind = _kind(value)
                if key.startswith("_") or key in NOT_COLUMNS or kind is None:
                    continue
                kinds[key] = kind if kinds.get(key, kind) == kind else "text"
        columns += [Column(f"{group}.{key}", kind) for key, kind in kinds.items()]
    return tuple(columns)


def metric_columns() -> list[str]:
    """The final figures every run declares, whether or not its loss and cut-offs produce them: the
    metrics every table comparing runs shows (`metrics.summary_metrics`), at the tab's cut-offs."""
    return [f"final/{name}" for name in [*summary_metrics(HPARAMS_KS), *RUN_FIGURES]]


def hparams_row(cfg: DictConfig, choices: Mapping[str, str | None]) -> dict[str, str | float | bool | None]:
    """This run's value in every column: None where its options have no such key.

    `choices` are the options Hydra composed (`model: ncf`); outside a Hydra run a group falls back to its
    class name.
    """
    row: dict[str, str | float | bool | None] = {}
    for group in CHOICE_GROUPS:
        chosen = choices.get(group)
        if chosen is None and isinstance(cfg.get(group), Mapping):
            chosen = str(cfg[group].get("_target_", "")).rsplit(".", 1)[-1] or None
        row[group] = chosen
    data_file = cfg.data.get("path") or cfg.data.get("train_path")
    if data_file and row["data"]:
        row["data"] = f"{row['data']}:{PurePath(str(data_file)).name}"  # which of a user's files
    for column in hparam_columns()[len(CHOICE_GROUPS) :]:
        value = OmegaConf.select(cfg, column.name, default=None)
        row[column.name] = _as_kind(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value, column.kind)
    if _fitted_in_closed_form(cfg):  # no optimizer, schedule, negatives or regulariser took part: show none
        for name in row:
            if name.split(".")[0] in UNUSED_IN_CLOSED_FORM and name != "loss":
                row[name] = None
    return row


def log_run_table(
    loggers: Sequence[Logger], cfg: DictConfig, choices: Mapping[str, str | None], metrics: Mapping[str, Any], step: int
) -> None:
    """Every logger gets the row and the final metrics (as `final/<name>` at `step`); TensorBoard also
    gets the declared columns."""
    row = hparams_row(cfg, choices)
    final = {f"final/{name}": value for name, value in metrics.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    for logger in loggers:
        logger.log_metrics(final, step=step)
        if isinstance(logger, TensorBoardLogger):
            writer = logger.experiment._get_file_writer()
            for summary in hparams_summaries(hparam_columns(), row, metric_columns()):
                writer.add_summary(summary)
        else:  # CSV, MLflow, W&B: their log_hyperparams takes the parameters alone
            logger.log_hyperparams({name: value for name, value in row.items() if value is not None})
        logger.save()  # after fit and test, nothing else will flush what was logged here


def hparams_summaries(columns: Sequence[Column], row: Mapping[str, Any], metrics: Sequence[str]) -> list[Summary]:
    """The three summaries TensorBoard's HParams plugin reads: the declared columns, this run's values, success."""
    experiment = api_pb2.Experiment(
        hparam_infos=[api_pb2.HParamInfo(name=column.name, type=_TYPES[column.kind]) for column in columns],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=name)) for name in metrics],
    )
    start = plugin_data_pb2.SessionStartInfo()
    for column in columns:
        value = row.get(column.name)
        if value is None and column.kind == "text":
            value = ABSENT_TEXT
        if value is not None:
            start.hparams[column.name].CopyFrom(_protobuf_value(value))
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS)
    return [
        _summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
        _summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)),
        _summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)),
    ]


class TensorBoardRunLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger without the `hparams.yaml` it writes into every run folder: the
    module keeps its hyperparameters out of the logger, so the file would be empty, and nothing reads it
    (the run's config is `.hydra/config.yaml`, the table is in the event file)."""

    def save(self) -> None:
        if self._experiment is not None:
            self.experiment.flush()


def _fitted_in_closed_form(cfg: DictConfig) -> bool:
    try:  # the config the user composed, never one read from disk
        return issubclass(get_class(str(cfg.model._target_)), ClosedFormRecommender)
    except (ImportError, ValueError):  # a target that does not import has failed the run before this
        return False


def _kind(value: Any) -> Kind | None:
    if isinstance(value, bool):
        return "flag"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "text"
    return None


def _as_kind(value: Any, kind: Kind) -> str | float | bool | None:
    if value is None:
        return None
    if kind == "flag":
        return value if isinstance(value, bool) else None
    if kind == "number":
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return value if isinstance(value, str) else json.dumps(value)


def _protobuf_value(value: str | float | bool) -> struct_pb2.Value:
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, str):
        return struct_pb2.Value(string_value=value)
    return struct_pb2.Value(number_value=value)


def _summary(tag: str, content: plugin_data_pb2.HParamsPluginData) -> Summary:
    content.version = metadata.PLUGIN_DATA_VERSION
    plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
    return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])
