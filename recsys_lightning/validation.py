"""Checks of a composed config, run once before any data is loaded, so a bad value is one line that
names the key and the accepted range, never a traceback from torch or Lightning after an epoch.

Each entry point has a table of rules, key -> accepted values (recommend's is in serving/arguments.py,
beside the serving facts it needs); a key its config does not have (say model.gmf_dim with model=mf,
or a dropped callback) is skipped. Checks across keys follow the table: monitors against the metrics
eval.ks makes, loss against sampler, folders against files.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from recsys_lightning import monitor
from recsys_lightning.config import group_options
from recsys_lightning.data.split import SPLIT_KINDS
from recsys_lightning.errors import ConfigError
from recsys_lightning.metrics import METRIC_NAMES
from recsys_lightning.presets import check_preset_choices, replaced_preset_key

MAX_WIDTH = 2**16
MAX_COUNT = 2**31 - 1
MAX_SHOWN = 80  # characters of a bad value quoted in a message
_ABSENT = object()


class Rule:
    """The values one key accepts: `accepts` decides, `str(rule)` tells the user what would do."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class Number(Rule):
    """A finite int or float, never a bool (`integer`: ints only), within [low, high]; an `open_` side
    excludes its bound."""

    low: float | None = None
    high: float | None = None
    integer: bool = False
    open_low: bool = False
    open_high: bool = False

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = self.low is None or value > self.low or (value == self.low and not self.open_low)
        below = self.high is None or value < self.high or (value == self.high and not self.open_high)
        return above and below

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            return f"{kind} in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"
        if self.low is not None:
            return f"{kind} {'>' if self.open_low else '>='} {self.low}"
        if self.high is not None:
            return f"{kind} {'<' if self.open_high else '<='} {self.high}"
        return "an integer" if self.integer else "a finite number"


def integer(low: int | None = None, high: int | None = None) -> Number:
    return Number(low, high, integer=True)


@dataclass(frozen=True)
class Choice(Rule):
    """One of the given values, compared with their type (so true is not 1)."""

    options: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(option) and value == option for option in self.options)

    def __str__(self) -> str:
        options = ", ".join(shown(option) for option in self.options)
        return options if len(self.options) == 1 else f"one of {options}"


@dataclass(frozen=True)
class Pattern(Rule):
    """A string matching `regex` as a whole; `description` is what the user reads."""

    regex: str
    description: str

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and re.fullmatch(self.regex, value) is not None

    def __str__(self) -> str:
        return self.description


@dataclass(frozen=True)
class ListOf(Rule):
    """A list of at least `min_length` entries, each accepted by `entry`."""

    entry: Rule
    min_length: int
    example: str

    def accepts(self, value: Any) -> bool:
        return isinstance(value, list) and len(value) >= self.min_length and all(self.entry.accepts(item) for item in value)

    def __str__(self) -> str:
        return f"a {'non-empty ' if self.min_length else ''}list, each entry {self.entry}, e.g. {self.example}"


@dataclass(frozen=True)
class AnyOf(Rule):
    rules: tuple[Rule, ...]

    def accepts(self, value: Any) -> bool:
        return any(rule.accepts(value) for rule in self.rules)

    def __str__(self) -> str:
        return " or ".join(str(rule) for rule in self.rules)


@dataclass(frozen=True)
class Kind(Rule):
    """Any value of the given Python types (never a bool unless bool is one of them)."""

    types: tuple[type, ...]
    description: str

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.types) and (bool in self.types or not isinstance(value, bool))

    def __str__(self) -> str:
        return self.description


class Encoding(Rule):
    def accepts(self, value: Any) -> bool:
        try:
            # str.encode accepts text encodings only: codecs.lookup would also take base64 or rot13.
            return isinstance(value, str) and "".encode(value) is not None
        except LookupError:
            return False

    def __str__(self) -> str:
        return "a text encoding Python knows (utf-8, latin-1, cp1252, utf-16, ...)"


class Shares(Rule):
    """Train, valid and test shares of a ratio or temporal split."""

    def accepts(self, value: Any) -> bool:
        numbers = isinstance(value, list) and len(value) == 3 and all(Number(0, open_low=True).accepts(share) for share in value)
        return numbers and abs(sum(value) - 1.0) <= 1e-6

    def __str__(self) -> str:
        return "three positive numbers (train, valid, test) summing to 1, e.g. [0.8,0.1,0.1]"


NULL = Kind((type(None),), "null")
FLAG = Kind((bool,), "true or false")
TEXT = Pattern(r"(?s).+", "a non-empty string")
MODE = Choice(("min", "max"))
POSITIVE = Number(0, open_low=True)
NON_NEGATIVE = Number(0)
SCALAR_ID = Kind((str, int, float, bool), "a single id")
# A Lightning batch limit: a count of batches (int) or a share of them (float); null = all.
BATCH_LIMIT = AnyOf((integer(1), Number(0, 1, open_low=True), NULL))


def optional(rule: Rule) -> Rule:
    return AnyOf((rule, NULL))


TRAINING_RULES: dict[str, Rule] = {
    # conf/config.yaml
    "seed": integer(0, 2**32 - 1),  # numpy's seed range
    "eval.ks": ListOf(integer(1), 1, "[10,20]"),
    "projector.max_items": integer(0),
    "run_test": FLAG,
    "monitor.metric": TEXT,
    "monitor.mode": MODE,
    "optimized_metric": optional(TEXT),
    "memory_limit_gib": optional(NON_NEGATIVE),
    "pretrained_from": ListOf(TEXT, 0, "[outputs/runs/<date>/<time>_gmf,outputs/runs/<date>/<time>_mlp]"),
    # conf/data
    "data.split": Choice(SPLIT_KINDS),
    "data.split_ratios": Shares(),
    "data.batch_size": AnyOf((Choice(("auto",)), integer(1))),  # auto: sized_defaults.auto_batch_size
    "data.eval_chunk_size": integer(1),
    "data.eval_max_scores": integer(1),
    "data.val_users": optional(integer(1)),
    "data.min_rating": optional(Number()),
    "data.min_user_interactions": integer(0),
    "data.min_item_interactions": integer(0),
    "data.encoding": Encoding(),
    "data.on_overlap": Choice(("drop", "error")),
    "data.sep": optional(TEXT),
    "data.item_features": ListOf(TEXT, 0, "[genre,year]"),
    "data.user_features": ListOf(TEXT, 0, "[age,gender,occupation]"),
    "data.users_path": optional(TEXT),
    "data.feature_sep": optional(TEXT),
    "data.download_timeout": POSITIVE,
    # Indices are int64 but counts beyond 2^31 users or items are a typo on any machine this runs on.
    "data.num_users": integer(1, MAX_COUNT),
    "data.num_items": integer(1, MAX_COUNT),
    "data.num_interactions": integer(1, MAX_COUNT),
    "data.num_clusters": integer(1),
    "data.popularity_exponent": Number(),
    "data.user_activity_exponent": Number(),
    "data.affinity": Number(0, 1),
    # conf/model
    # Widths up to 2^16: far beyond any useful embedding, and a crafted checkpoint cannot ask for terabytes.
    "model.dim": integer(1, MAX_WIDTH),
    "model.gmf_dim": integer(1, MAX_WIDTH),
    "model.mlp_dim": integer(1, MAX_WIDTH),
    "model.hidden": ListOf(integer(1, MAX_WIDTH), 1, "[64,32]"),
    "model.dropout": Number(0, 1, open_high=True),
    "model.init_std": POSITIVE,
    "model.bias": FLAG,
    "model.zero_init_mlp": FLAG,
    "model.paths": ListOf(Choice(("gmf", "mlp")), 1, "[gmf,mlp]"),
    "model.pretrained_alpha": Number(0, 1),
    "model.features": FLAG,
    "model.id_dropout": Number(0, 1, open_high=True),
    # set from the data's feature vocabularies (build.with_feature_counts); bounded for checkpoints' sake
    "model.num_item_features": integer(0, MAX_COUNT),
    "model.num_user_features": integer(0, MAX_COUNT),
    "model.sparse_gradients": FLAG,
    "model.l2": POSITIVE,  # EASE's lambda: X^T X + l2 I must be invertible
    "model.max_items": integer(1),
    "model.num_neighbours": integer(1, MAX_COUNT),
    "model.shrink": NON_NEGATIVE,
    # conf/loss, conf/sampler
    "loss.l2": NON_NEGATIVE,
    "loss.temperature": POSITIVE,
    "loss.log_q_correction": FLAG,
    "sampler.num_negatives": integer(1),
    "sampler.candidates": integer(1),
    "sampler.run_dir": optional(TEXT),  # required by sampler=retrieved, which says so when it is bound
    "sampler.alpha": NON_NEGATIVE,  # count^alpha: a negative power of an unseen item's 0 count is inf
    "sampler.max_rounds": integer(0),
    # conf/optimizer, conf/scheduler
    "optimizer.lr": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.initial_accumulator_value": NON_NEGATIVE,
    "optimizer.fused": optional(FLAG),
    "scheduler.interval": Choice(("epoch", "step")),
    "scheduler.scheduler.mode": MODE,
    "scheduler.scheduler.factor": Number(0, 1, open_low=True, open_high=True),
    "scheduler.scheduler.patience": integer(0),
    "scheduler.scheduler.T_max": integer(1),
    # conf/trainer
    "trainer.max_epochs": integer(1),
    "trainer.accelerator": Choice(("auto", "cpu", "gpu", "cuda", "mps", "tpu")),
    "trainer.devices": AnyOf((integer(1), Choice((-1, "auto")), ListOf(integer(0), 1, "[0,1]"))),
    "trainer.num_nodes": integer(1),
    "trainer.check_val_every_n_epoch": integer(1),
    "trainer.num_sanity_val_steps": integer(-1),
    "trainer.limit_train_batches": BATCH_LIMIT,
    "trainer.limit_val_batches": BATCH_LIMIT,
    "trainer.log_every_n_steps": integer(1),
    "trainer.deterministic": AnyOf((FLAG, Choice(("warn",)))),
    "trainer.gradient_clip_val": optional(NON_NEGATIVE),
    "trainer.gradient_clip_algorithm": Choice(("norm", "value")),
    # conf/callbacks
    "callbacks.early_stopping.patience": AnyOf((Choice(("auto",)), integer(0))),  # auto: sized_defaults.auto_patience
    "callbacks.early_stopping.mode": MODE,
    "callbacks.model_checkpoint.mode": MODE,
    "callbacks.model_checkpoint.save_top_k": integer(-1),
    "callbacks.progress_bar.refresh_rate": integer(0),
    "callbacks.progress_log.interval_seconds": NON_NEGATIVE,
    "callbacks.nonfinite_loss_guard.check_every": integer(1),
}

EVALUATE_RULES: dict[str, Rule] = {
    "checkpoint": TEXT,
    "split": Choice(("test", "valid")),
    "accelerator": Choice(("auto", "cpu", "gpu", "cuda")),
    "tolerance": NON_NEGATIVE,
    "retrieval.run_dir": optional(TEXT),
    "retrieval.candidates": integer(1),
}


def check_training_config(cfg: DictConfig) -> None:
    """Everything `train` can check without data: the entry point calls it first."""
    check_known_keys(cfg)
    check_preset_choices(cfg)
    check_rules(cfg, TRAINING_RULES)
    check_monitors(cfg)
    check_loss_and_sampler(cfg)
    check_checkpoint_schedule(cfg)
    check_cuda_available("trainer.accelerator", cfg.trainer.accelerator)
    _check_trainer_devices(cfg)
    for key in ("paths.data_dir", "paths.run_dir"):
        check_folder_path(key, config_value(cfg, key))
    _check_pretrained_runs(config_value(cfg, "pretrained_from"))


# Keys Hydra's instantiate reads itself, never passed to the constructor.
_INSTANTIATE_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})


def check_known_keys(cfg: DictConfig) -> None:
    """A key the group's class does not take (`+trainer.max_epoch=3`, or a preset's `model.features`
    kept after `model=popularity`) is one line naming the closest valid key, before any data is loaded;
    otherwise the constructor's TypeError comes after the data, with an empty run folder left behind."""
    for group in ("data", "model", "loss", "sampler", "optimizer", "trainer"):
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or not isinstance(node.get("_target_"), str):
            continue
        accepted = argument_names(node._target_)
        if accepted is None:
            continue
        unknown = sorted(set(node.keys()) - _INSTANTIATE_KEYS - accepted)
        if unknown:
            key = unknown[0]
            from_preset = replaced_preset_key(cfg, group, key)
            if from_preset:
                raise ConfigError(from_preset)
            close = difflib.get_close_matches(key, sorted(accepted), n=1)
            settable = sorted(name for name in accepted if not name.startswith("num_"))  # sizes come from the data
            hint = f"did you mean {group}.{close[0]}?" if close else f"it takes {', '.join(settable)[:300] or 'none'}"
            owner = node._target_.rsplit(".", 1)[-1]
            raise ConfigError(f"{group}.{key}: {owner} has no such setting; {hint}")


def argument_names(target: str) -> frozenset[str] | None:
    """Keyword arguments `target`'s constructor takes, following `**kwargs` up the class hierarchy;
    None when some constructor takes any keyword (nothing to check names against)."""
    names: set[str] = set()
    for klass in get_class(target).__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return frozenset(names)
    return None


def check_evaluate_config(cfg: DictConfig) -> None:
    """`evaluate`'s arguments, checked before any data or checkpoint is read."""
    check_run_dir_given(cfg)
    check_rules(cfg, EVALUATE_RULES)
    check_cuda_available("accelerator", cfg.accelerator)


def _check_pretrained_runs(run_dirs: Any) -> None:
    """Before any data is loaded: each run to start from is a folder (a preset names placeholders)."""
    for run_dir in run_dirs if isinstance(run_dirs, list) else []:
        if not Path(run_dir).is_dir():
            raise ConfigError(
                f"pretrained_from: {shown(run_dir)} is not a folder; list the training runs to start from, "
                "e.g. pretrained_from=[outputs/runs/<date>/<time>_gmf,outputs/runs/<date>/<time>_mlp]"
            )


def check_run_dir_given(cfg: DictConfig) -> None:
    """`run_dir: ???` otherwise ends in OmegaConf's MissingMandatoryValue traceback at first use."""
    if OmegaConf.is_missing(cfg, "run_dir") or not cfg.run_dir:
        raise ConfigError("run_dir is not set: set run_dir=<a training run folder>, e.g. run_dir=outputs/runs/<date>/<time>_<name>")


def check_rules(cfg: DictConfig, rules: dict[str, Rule]) -> None:
    for key, rule in rules.items():
        value = config_value(cfg, key)
        if value is not _ABSENT and not rule.accepts(value):
            raise ConfigError(f"{key}={shown(value)}: must be {rule}")


def logged_metrics(cfg: DictConfig) -> list[str]:
    """Names the module logs during fit with this config (module.py): what a monitor may name."""
    loss_class = get_class(cfg.loss._target_)
    names = [f"val/{metric}@{k}" for metric in METRIC_NAMES for k in cfg.eval.ks] + ["train/loss"]
    return names + [f"val/{name}" for kind in loss_class.prediction_metrics for name in kind.names]


def lower_is_better(cfg: DictConfig) -> list[str]:
    """The logged metrics a monitor must watch with mode=min: the training loss and errors."""
    return monitor.lower_is_better(cfg.loss._target_)


def check_monitors(cfg: DictConfig) -> None:
    """Every monitor (`monitor`, callbacks, plateau scheduler, optimized_metric) must name a metric this
    run makes, watched in the right direction. Keys naming the same missing metric are reported
    together; a key that only follows `monitor` (the default) is reported as `monitor.metric`/`mode`,
    the keys a user sets."""
    logged = logged_metrics(cfg)
    # optimized_metric is read from metrics.json: validation and test figures, no training loss.
    test_metrics = (*METRIC_NAMES, "coverage", "novelty")
    test_names = [f"test/{metric}@{k}" for metric in test_metrics for k in cfg.eval.ks] + [
        f"test/{name}" for kind in get_class(cfg.loss._target_).prediction_metrics for name in kind.names
    ]
    recorded = [name for name in logged if name != "train/loss"] + (test_names if cfg.run_test else [])
    watchers = [
        (f"callbacks.{name}.monitor", f"callbacks.{name}.mode")
        for name, callback in cfg.callbacks.items()
        if callback and callback.get("monitor") is not None
    ]
    if cfg.get("scheduler") and "monitor" in cfg.scheduler:
        watchers.append(("scheduler.monitor", "scheduler.scheduler.mode"))
    # Watchers that follow `monitor` collapse into it: one key reported, once.
    monitors = dict.fromkeys([("monitor.metric", "monitor.mode")] if "monitor" in cfg else [], logged)
    monitors |= {(_set_at(cfg, key), _set_at(cfg, mode_key)): logged for key, mode_key in watchers}
    if cfg.get("optimized_metric"):
        monitors[("optimized_metric", None)] = recorded
    missing: dict[str, tuple[list[str], list[str]]] = {}
    lower = lower_is_better(cfg)
    for (key, mode_key), valid in monitors.items():
        name = config_value(cfg, key)
        if name not in valid:
            keys = missing.setdefault(str(name), ([], valid))[0]
            if key not in keys:  # e.g. callbacks.epoch_log.monitor (no mode) also follows monitor.metric
                keys.append(key)
            continue
        mode = config_value(cfg, mode_key) if mode_key else None
        if mode == "max" and name in lower:
            raise ConfigError(f"{mode_key}=max, but {key}={name} is better when lower: set {mode_key}=min")
        if mode == "min" and name not in lower:
            raise ConfigError(f"{mode_key}=min, but {key}={name} is better when higher: set {mode_key}=max")
    for name, (keys, valid) in missing.items():
        names = "names" if len(keys) == 1 else "name"
        raise ConfigError(f"{', '.join(keys)}={shown(name)} {names} no metric this run logs: {_advice(name, valid, list(cfg.eval.ks))}")


def _set_at(cfg: DictConfig, key: str) -> str:
    """`monitor.metric` (or `monitor.mode`) for a key whose value is just an interpolation of it, else `key`."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    raw = OmegaConf.to_container(node, resolve=False).get(leaf) if isinstance(node, DictConfig) else None
    followed = {"${monitor.metric}": "monitor.metric", "${monitor.mode}": "monitor.mode"}
    return followed.get(raw, key) if isinstance(raw, str) else key


def _advice(name: str, valid: list[str], ks: list[int]) -> str:
    cut_off = re.fullmatch(r"(val|test)/(\w+)@(\d+)", name)
    if cut_off and any(option.startswith(f"{cut_off.group(1)}/{cut_off.group(2)}@") for option in valid):
        stage, metric, k = cut_off.groups()
        return f"eval.ks={shown(ks)} has no {k}; add {k} to eval.ks or use {stage}/{metric}@{ks[0]}"
    closest = difflib.get_close_matches(name, valid, n=1)
    others = "".join(f", {option}" for option in valid if "@" not in option)
    return (f"did you mean {closest[0]}? " if closest else "") + f"logged are val/<{'|'.join(METRIC_NAMES)}>@K for K in eval.ks{others}"


def check_loss_and_sampler(cfg: DictConfig) -> None:
    """Fail at once, before any data is loaded, on a loss that cannot train with the chosen sampler."""
    loss_class = get_class(cfg.loss._target_)
    sampler_class = get_class(cfg.sampler._target_)
    reason = loss_class.sampler_conflict(sampler_class)
    if reason is None:
        return
    targets = {name: option.get("_target_") for name, option in group_options("sampler").items()}
    valid = [name for name, target in targets.items() if target and loss_class.sampler_conflict(get_class(target)) is None]
    raise ConfigError(
        f"{loss_class.__name__} cannot train with {sampler_class.__name__}: {reason}; "
        f"with this loss use sampler={' or sampler='.join(valid)}"
    )


# ModelCheckpoint settings that save on another schedule than validation's, or not at all (None: unset).
_OFF_SCHEDULE = {"every_n_epochs": (None, 1), "every_n_train_steps": (None, 0), "train_time_interval": (None,)}


def check_checkpoint_schedule(cfg: DictConfig) -> None:
    """A finished run must leave a best checkpoint to test and serve: checkpoints are written at every
    validation (FinalValidation adds one at the end of training), so a setting that writes them on
    another schedule, or none at all, is refused before any data is loaded."""
    if config_value(cfg, "trainer.fast_dev_run") not in (_ABSENT, None, False, 0):
        raise ConfigError("trainer.fast_dev_run writes no checkpoint to test or serve; try a setup with debug=quick instead")
    if config_value(cfg, "trainer.enable_checkpointing") is False:
        raise ConfigError("trainer.enable_checkpointing=false leaves no checkpoint to test or serve; drop it")
    for name, callback in (cfg.get("callbacks") or {}).items():
        if not callback or not str(callback.get("_target_", "")).endswith("ModelCheckpoint"):
            continue
        for key, allowed in _OFF_SCHEDULE.items():
            value = config_value(cfg, f"callbacks.{name}.{key}")
            if value is not _ABSENT and value not in allowed:
                raise ConfigError(
                    f"callbacks.{name}.{key}={shown(value)}: checkpoints are written at every validation, so the best "
                    "is picked over all of them; drop it, and set how often to validate with trainer.check_val_every_n_epoch"
                )
    if config_value(cfg, "callbacks.model_checkpoint.save_top_k") == 0:
        raise ConfigError("callbacks.model_checkpoint.save_top_k=0 keeps no best checkpoint to test or serve; use 1 (or more)")


def check_folder_path(key: str, path: Any) -> None:
    """A folder the run creates or reads: nothing on its path may be a file (mkdir would fail later)."""
    blocking = _first_existing(Path(str(path)))
    if not blocking.is_dir():
        where = "is a file" if blocking == Path(str(path)) else f"cannot be created: {shown(str(blocking))} is a file"
        raise ConfigError(f"{key}={shown(str(path))} {where}; point it at a folder (or a path that does not exist yet)")


def check_cuda_available(key: str, device: Any) -> None:
    """A device asked for (cuda, cuda:<index>, gpu; mps, tpu) must exist here: torch and Lightning fail
    only later, after the data is loaded (for tpu, in a many-line Hydra error about torch_xla)."""
    if device in ("mps", "tpu"):
        missing = _missing_backend(device)
        if missing:
            raise ConfigError(f"{key}={device}: {missing}; use {key}=cpu or auto")
        return
    if not (isinstance(device, str) and device.split(":")[0] in ("cuda", "gpu")):
        return
    available = _cuda_devices()
    if available == 0:
        raise ConfigError(f"{key}={device}: no CUDA device is visible here; use {key}=cpu (or auto)")
    if ":" in device and int(device.split(":")[1]) >= available:
        raise ConfigError(f"{key}={device}: only {available} CUDA device(s) here, cuda:0 to cuda:{available - 1}")


def _missing_backend(accelerator: str) -> str:
    """Why Lightning's mps or tpu accelerator cannot run here, '' when it can (as far as can be told
    without starting it: a TPU also needs the machine to have one)."""
    import importlib.util

    if accelerator == "mps":
        return "" if torch.backends.mps.is_available() else "Apple's MPS backend is not available here (macOS on Apple silicon only)"
    return "" if importlib.util.find_spec("torch_xla") is not None else "a TPU needs torch_xla, which is not installed here"


def _check_trainer_devices(cfg: DictConfig) -> None:
    """On CUDA, Lightning fails after the data is loaded when trainer.devices asks for more GPUs than exist."""
    accelerator, devices = cfg.trainer.accelerator, config_value(cfg, "trainer.devices")
    available = _cuda_devices()
    if accelerator not in ("gpu", "cuda") and not (accelerator == "auto" and available):
        return
    wanted = max(devices) + 1 if isinstance(devices, list) else devices if isinstance(devices, int) else 1
    if wanted > available:
        raise ConfigError(
            f"trainer.devices={shown(devices)}: only {available} CUDA device(s) here; lower it or use trainer.accelerator=cpu"
        )


def _cuda_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _first_existing(path: Path) -> Path:
    return next(candidate for candidate in (path, *path.parents) if candidate.exists() or candidate == candidate.parent)


def config_value(cfg: DictConfig, key: str) -> Any:
    """The resolved, plain value of `key`, or _ABSENT when the config has no such key."""
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise ConfigError(f"{key} is not set: give it a value, {key}=<value>") from error
    except OmegaConfBaseException as error:
        raise ConfigError(f"{key}: {shown(str(error).splitlines()[0], 200)}") from error
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """A value as a user types it on the command line, cut to `limit` characters."""
    text = {True: "true", False: "false", None: "null"}.get(value, value) if isinstance(value, (bool, type(None))) else value
    text = str(text).replace("'", "").replace(" ", "") if isinstance(text, list) else str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
