"""The config a run was trained with, recorded in each of its checkpoints and compared key by key when
a run resumes from one: default-deny, so a resumed run may change only the keys of RESUME_MAY_CHANGE.

The record is the composed config as the user wrote it (interpolations as text) plus the values its
interpolations resolved to when it was saved, locations aside. A file's record is only compared, never
resolved or instantiated, so a crafted one can neither read the environment nor build anything.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks.early_stopping import EarlyStopping, EarlyStoppingReason

from recsys_lightning.errors import ConfigError, cut
from recsys_lightning.models.closed_form import ClosedFormRecommender
from recsys_lightning.ranges import MAX_COUNT, integer

log = logging.getLogger(__name__)

# Keys (and whole subtrees) a resumed run may change, each because it neither changes what is trained nor
# how a checkpoint is judged; every other key must equal the checkpoint's record. Left out on purpose:
# data.eval_chunk_size / eval_max_scores (the per-chunk seeds of sampled prediction metrics follow the
# chunks), trainer.devices / strategy / num_nodes (they shard batches and seed streams by rank), patience,
# monitors, precision, limits on batches, eval.ks (the metrics a checkpoint was judged and logged by).
RESUME_MAY_CHANGE = (
    "ckpt_path",  # what this run resumes from
    "trainer.max_epochs",  # training longer is what a resume is for; check_resume_callbacks refuses fewer
    "paths",  # where data, outputs and the run folder live; the data itself is compared with the checkpoint's catalogue
    "run_name",  # the run folder's label
    "trainer.default_root_dir",  # Lightning's fallback output folder
    "logger",  # whether and where metrics are logged
    "callbacks.progress_bar",  # display only
    "callbacks.progress_log",  # display only
    "trainer.enable_progress_bar",  # display only
    "trainer.log_every_n_steps",  # how often logged, not what is trained
    "projector.max_items",  # the TensorBoard export after training
    "run_test",  # whether the best checkpoint is also tested; training and validation are unchanged
    "trainer.accelerator",  # the same computation on other hardware (a job moved to a GPU node)
    "runtime",  # how many threads compute it
)
ABSENT = "<absent>"
MAPPING = "{...}"
# Interpolations that name a location (compared as text only: a moved run folder resolves them elsewhere).
LOCATIONS = ("${paths.", "${hydra:", "${oc.env:", "${project_root:")
SHOWN_KEYS = 3  # differing keys one error line names
# Classes a config names that moved since older checkpoints recorded them: the same class under its new
# name, so a run folder made before the move still resumes (issue 23 moved the run-folder modules to runs/).
MOVED_TARGETS = {"recsys_lightning.checkpoint_io.AtomicCheckpointIO": "recsys_lightning.runs.checkpoint_io.AtomicCheckpointIO"}
# Keys whose `auto` a run resolves from its data (data/sized_defaults.py), with the numbers a record may hold: a
# run recorded before `auto` existed (issue 27) holds the number it trained with, which its resume keeps.
AUTO_SIZED = {"data.batch_size": integer(1, MAX_COUNT), "callbacks.early_stopping.patience": integer(0, MAX_COUNT)}
AUTO = "auto"
_MAX_DEPTH = 32  # a record nested deeper is not one this code wrote
_MAX_LEAVES = 100_000


def config_record(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as plain data, interpolations kept as their text (`${paths.run_dir}`), and the
    values those interpolations resolve to, except locations: `scheduler.T_max: ${trainer.max_epochs}`
    reads a key a resume may change, so its text stays while its value would not."""
    config = OmegaConf.to_container(cfg, resolve=False)
    resolved = {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, text in _flat(config).items()
        if isinstance(text, str) and "${" in text and not any(marker in text for marker in LOCATIONS) and not _may_change(key)
        for value in [OmegaConf.select(cfg, key, throw_on_resolution_failure=False)]
    }
    return {"config": config, "resolved": resolved}


def changed_settings(recorded: Any, cfg: DictConfig) -> list[tuple[str, Any, Any]]:
    """(key, recorded value, this run's value) for every key outside RESUME_MAY_CHANGE that differs,
    in this run's config order (keys only one side has count: `+key=...`, `~key`); `recorded` is a
    checkpoint's `config_record`."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("config"), dict) or not isinstance(recorded.get("resolved"), dict):
        raise ValueError("not a record")
    current = config_record(cfg)
    old, new = _flat(recorded["config"]), _flat(current["config"])
    keys = list(new) + [key for key in old if key not in new]
    changed: dict[str, tuple[Any, Any]] = {}
    for key in keys:
        before, after = old.get(key, ABSENT), new.get(key, ABSENT)
        if _may_change(key) or _canonical(key, before) == _canonical(key, after):
            continue
        if before == ABSENT:  # a whole subtree added or removed is named once: `callbacks.early_stopping`
            key = _absent_root(key, old)
            after = new.get(key, MAPPING)
        elif after == ABSENT:
            key = _absent_root(key, new)
            before = old.get(key, MAPPING)
        changed.setdefault(key, (before, after))
    old_values, new_values = _flat(recorded["resolved"]), _flat(current["resolved"])
    for key, after in new_values.items():  # the same text resolving to another value
        before = old_values.get(key, ABSENT)
        if key not in changed and _canonical(key, before) != _canonical(key, after):
            changed[key] = (before, after)
    return [(key, before, after) for key, (before, after) in changed.items()]


def check_same_config(recorded: Any, cfg: DictConfig, ckpt_path: str) -> None:
    """One line naming the first differing keys (old -> new) unless `cfg` asks for what the checkpoint
    was trained and judged with; `recorded` is the checkpoint's untrusted record (None: it has none)."""
    if recorded is None or (isinstance(recorded, dict) and "config" not in recorded):
        raise ConfigError(
            f"ckpt_path={ckpt_path}: it carries no record of the config it was trained with (an older version wrote "
            "it), so a resume cannot be checked; start a new run folder (drop ckpt_path and hydra.run.dir)"
        )
    try:
        _keep_recorded_sizes(recorded, cfg)
        changed = changed_settings(recorded, cfg)
    except (ValueError, RecursionError):
        raise ConfigError(
            f"ckpt_path={ckpt_path}: its record of the config it was trained with is malformed; the file was altered, "
            "resume from another checkpoint"
        ) from None
    if changed:
        shown = ", ".join(f"{key} ({_shown(old)} -> {_shown(new)})" for key, old, new in changed[:SHOWN_KEYS])
        more = f" and {len(changed) - SHOWN_KEYS} more" if len(changed) > SHOWN_KEYS else ""
        raise ConfigError(
            f"ckpt_path={ckpt_path}: this run changes {shown}{more}, which a resumed run cannot change (the checkpoint "
            "was trained and judged with the old values); revert them, or start a new run folder (drop ckpt_path and "
            "hydra.run.dir)"
        )


class RunRecord(pl.Callback):
    """Saves in every checkpoint what a resume needs and Lightning does not keep: the run's config, and
    whether fit had decided to stop (early stopping sets `should_stop` before the epoch's checkpoint is
    written, so a resumed finished fit stops at once instead of training one more epoch).

    train() adds it itself, so no config can leave it out."""

    def __init__(self, cfg: DictConfig) -> None:
        self.record = config_record(cfg)
        self.stop_on_resume = False
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stop_on_resume:  # after Lightning restored the checkpoint: the fit it ended stays ended
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {**self.record, "should_stop": self.stop_on_resume or (self._trainer is not None and fit_ended_for_good(self._trainer))}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stop_on_resume = state_dict.get("should_stop") is True


def fit_ended_for_good(trainer: pl.Trainer) -> bool:
    """Whether the fit ended by its own decision, which a resume keeps: early stopping ran out of patience, or
    a closed-form model was fitted (one step). A stop at `max_epochs`, `max_steps` or `max_time` (requested
    by FinalValidation or the Timer) is not one: raising those limits trains on."""
    stopped_early = any(
        isinstance(callback, EarlyStopping) and callback.stopping_reason != EarlyStoppingReason.NOT_STOPPED
        for callback in trainer.callbacks
    )
    closed_form = isinstance(getattr(trainer.lightning_module, "model", None), ClosedFormRecommender)
    return stopped_early or (closed_form and trainer.should_stop)


def recorded_state(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """RunRecord's saved state in an untrusted checkpoint, or None."""
    state = (checkpoint.get("callbacks") or {}).get(RunRecord.__qualname__)
    return state if isinstance(state, dict) else None


def _absent_root(key: str, side: dict[str, Any]) -> str:
    """The shortest prefix of `key` under which `side` holds no key at all."""
    parts = key.split(".")
    for end in range(1, len(parts) + 1):
        prefix = ".".join(parts[:end])
        if not any(name == prefix or name.startswith(prefix + ".") for name in side):
            return prefix
    return key


def _keep_recorded_sizes(recorded: Any, cfg: DictConfig) -> None:
    """A resume asking `auto` for a key its checkpoint recorded as a number in range trains on with that number."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("config"), dict):
        raise ValueError("not a record")
    old = _flat(recorded["config"])
    for key, rule in AUTO_SIZED.items():
        number = old.get(key)
        if OmegaConf.select(cfg, key, default=None) == AUTO and isinstance(number, int) and rule.accepts(number):
            OmegaConf.update(cfg, key, number)
            log.info("%s=%d, as the checkpoint recorded it (a run from before `auto`)", key, number)


def _may_change(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUME_MAY_CHANGE)


def _canonical(key: str, value: Any) -> Any:
    """Cut-offs are a set: eval.ks=[20,10] asks for the same metrics as [10,20]; a class that moved is named as it is
    now (MOVED_TARGETS)."""
    if key == "eval.ks" and isinstance(value, tuple) and all(isinstance(k, int) for k in value):
        return tuple(sorted(set(value)))
    return _moved(value)


def _moved(value: Any) -> Any:
    if isinstance(value, str):
        return MOVED_TARGETS.get(value, value)
    return tuple(_moved(item) for item in value) if isinstance(value, tuple) else value


def _flat(node: Any) -> dict[str, Any]:
    """`{"model": {"dim": 64}}` -> `{"model.dim": 64}`; lists become tuples (compared whole), an empty
    mapping is one key of its own (`scheduler: {}`), so removing or adding any key shows."""
    flat: dict[str, Any] = {}
    stack: list[tuple[str, Any, int]] = [("", node, 0)]
    while stack:
        prefix, value, depth = stack.pop()
        if depth > _MAX_DEPTH or len(flat) > _MAX_LEAVES:
            raise ValueError("too deep or too large")
        if isinstance(value, dict) and (value or not prefix):
            for key in reversed(list(value)):
                if not isinstance(key, str):
                    raise ValueError("a key that is not text")
                stack.append((f"{prefix}.{key}" if prefix else key, value[key], depth + 1))
        else:
            flat[prefix] = _frozen(value, depth)
    return flat


def _frozen(value: Any, depth: int) -> Any:
    """Lists as tuples (hashable, compared whole); anything but plain data is refused."""
    if depth > _MAX_DEPTH:
        raise ValueError("too deep")
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return tuple((str(key), _frozen(item, depth + 1)) for key, item in value.items())
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ValueError("not plain data")


def _shown(value: Any) -> str:
    """A value as a command-line override writes it (null, true, [10,20]), cut short."""
    if isinstance(value, str):
        return cut(value, 40) if value else "''"
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    if isinstance(value, tuple):
        return cut("[" + ",".join(_shown(item) for item in value) + "]", 40)
    return cut(str(value), 40)
