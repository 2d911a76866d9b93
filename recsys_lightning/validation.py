"""Checks of a composed config, run once before any data is loaded, so a bad value is one line that
names the key and the accepted range, never a traceback from torch or Lightning after an epoch.

What a key accepts is declared once (ranges.py): on the constructor parameter it rules (models, losses,
samplers, data sources, callbacks), else in the table of the entry point that takes it: train's below
(top-level keys, Lightning's and torch's classes), evaluate's in evaluate.py, recommend's in
serving/arguments.py. A key the config lacks (model.gmf_dim with model=mf) is skipped. Checks across
keys follow here: monitors against the metrics eval.ks makes, loss against sampler, folders against files.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from recsys_lightning import monitor
from recsys_lightning.config import group_options
from recsys_lightning.data.datamodule import EVAL_CANDIDATES
from recsys_lightning.devices import check_cuda_available, check_trainer_devices
from recsys_lightning.errors import ConfigError
from recsys_lightning.metrics import CATALOGUE_METRIC_NAMES, METRIC_NAMES
from recsys_lightning.prepared.datamodule import LAUNCH_HINT, PREPARED_TARGET, launched_rank
from recsys_lightning.presets import check_preset_choices, replaced_preset_key
from recsys_lightning.ranges import (
    FLAG,
    MODE,
    NON_NEGATIVE,
    NULL,
    POSITIVE,
    TEXT,
    AnyOf,
    Choice,
    ListOf,
    Range,
    Rule,
    argument_names,
    constructor_rules,
    integer,
    optional,
    shown,
    shown_path,
)
from recsys_lightning.rerank import is_reranker
from recsys_lightning.rerank.module import STAGE as RERANK_STAGE
from recsys_lightning.sharded import holds_tables
from recsys_lightning.threads import processes_per_host

_ABSENT = object()
# A Lightning batch limit: a count of batches (int) or a share of them (float); null = all.
BATCH_LIMIT = AnyOf((integer(1), Range(0, 1, open_low=True), NULL))

# train's keys that no constructor of the project takes (those declare their own: ranges.py).
TRAINING_RULES: dict[str, Rule] = {
    # conf/config.yaml
    "seed": integer(0, 2**32 - 1),  # numpy's seed range
    "eval.ks": ListOf(integer(1), 1, "[10,20]"),
    "eval.candidates": Choice(EVAL_CANDIDATES),
    "projector.max_items": integer(0),
    "run_test": FLAG,
    "monitor.metric": TEXT,
    "monitor.mode": MODE,
    "optimized_metric": optional(TEXT),
    "memory_limit_gib": optional(NON_NEGATIVE),
    "pretrained_from": ListOf(TEXT, 0, "[outputs/runs/<date>/<time>_gmf,outputs/runs/<date>/<time>_mlp]"),
    # conf/optimizer, conf/scheduler: torch's classes
    "optimizer.lr": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.initial_accumulator_value": NON_NEGATIVE,
    "optimizer.fused": optional(FLAG),
    "scheduler.interval": Choice(("epoch", "step")),
    "scheduler.scheduler.mode": MODE,
    "scheduler.scheduler.factor": Range(0, 1, open_low=True, open_high=True),
    "scheduler.scheduler.patience": integer(0),
    "scheduler.scheduler.T_max": integer(1),
    # conf/trainer, conf/callbacks: Lightning's classes
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
    "callbacks.early_stopping.patience": AnyOf((Choice(("auto",)), integer(0))),  # auto: sized_defaults.auto_patience
    "callbacks.early_stopping.mode": MODE,
    "callbacks.model_checkpoint.mode": MODE,
    "callbacks.model_checkpoint.save_top_k": integer(-1),
}

# The groups a run builds from their `_target_`: their keys are the constructor's arguments.
BUILT_GROUPS = ("data", "model", "loss", "sampler", "optimizer", "trainer")


def check_training_config(cfg: DictConfig) -> None:
    """Everything `train` can check without data: the entry point calls it first."""
    check_reranker_preset(cfg)  # before the keys: its data keys (item features) are no prepared folder's
    check_known_keys(cfg)
    check_preset_choices(cfg)
    check_rules(cfg, TRAINING_RULES)
    for key, node in _built_nodes(cfg, with_callbacks=True):
        check_rules(cfg, {f"{key}.{name}": rule for name, rule in constructor_rules(node._target_).items()})
    check_monitors(cfg)
    check_loss_and_sampler(cfg)
    check_eval_candidates(cfg)
    check_checkpoint_schedule(cfg)
    check_cuda_available("trainer.accelerator", cfg.trainer.accelerator)
    check_trainer_devices(cfg.trainer.accelerator, config_value(cfg, "trainer.devices"))
    for key in ("paths.data_dir", "paths.run_dir"):
        check_folder_path(key, config_value(cfg, key))
    _check_pretrained_runs(config_value(cfg, "pretrained_from"))
    check_prepared_data(cfg)


def check_reranker_preset(cfg: DictConfig) -> None:
    """A re-ranker trains on a retriever's candidate lists, whose keys (retrieval, rerank) and monitor
    (val/two_stage/ndcg@10) a preset sets: chosen alone, `model=linear_reranker` is refused in one line, and
    `+rerank.<key>` added to another model's run (read by nothing there) too."""
    if not is_reranker(cfg) and cfg.get("rerank") is not None:
        raise ConfigError(
            f"rerank.{next(iter(cfg.rerank), '')}: only a re-ranker's run (experiment=ml100k_reranker) reads rerank keys; "
            f"drop it to train model={_chosen_model(cfg)}"
        )
    if is_reranker(cfg) and cfg.data.get("_target_") == PREPARED_TARGET:
        raise ConfigError(
            "data=prepared: a re-ranker builds every user's candidate lists in one process, from the data its retriever "
            "was trained on in memory; use data=movielens|csv|synthetic (data=prepared trains retrievers across processes)"
        )
    if is_reranker(cfg) and cfg.get("rerank") is None:
        raise ConfigError(
            f"model={_chosen_model(cfg)} trains on a retriever's candidates: use experiment=ml100k_reranker "
            'retrieval.run_dir=<retriever run> rerank.fold_run_dir=<fold run> (README, "Two stages")'
        )


def _chosen_model(cfg: DictConfig) -> str:
    return str(cfg.model._target_).rsplit(".", 1)[-1]


def check_prepared_data(cfg: DictConfig) -> None:
    """What data=prepared cannot do, refused before any part is read: processes Lightning would spawn itself
    (each reads its share as the launcher placed it), side features (not prepared yet), and on several
    processes what needs every user's history in one (the retrieved sampler's run, pretrained runs)."""
    if cfg.data.get("_target_") != PREPARED_TARGET:
        return
    if cfg.model.get("features"):
        raise ConfigError(
            "model.features=true: data=prepared holds no side features yet; set model.features=false or use data=movielens|csv"
        )
    _, world = launched_rank()
    nodes = config_value(cfg, "trainer.num_nodes")
    processes = processes_per_host(config_value(cfg, "trainer.devices")) * (nodes if isinstance(nodes, int) else 1)
    if world == 1 and processes > 1:
        raise ConfigError(
            f"data=prepared reads one share per process, and {processes} processes were asked for (trainer.devices, "
            f"trainer.num_nodes) without a launcher: {LAUNCH_HINT.format(world=processes)}"
        )
    if world == 1:
        return
    if str(cfg.sampler.get("_target_", "")).endswith(".RetrievedSampler"):
        raise ConfigError(
            f"sampler=retrieved with data=prepared on {world} processes: checking the retrieving run needs every user; use another sampler"
        )
    if cfg.get("pretrained_from"):
        raise ConfigError(
            f"pretrained_from with data=prepared on {world} processes: checking the runs' data needs every user; train in one process"
        )


def _built_nodes(cfg: DictConfig, with_callbacks: bool = False) -> list[tuple[str, DictConfig]]:
    """(key, node) of each node the run builds from a `_target_`: the groups' and, `with_callbacks`, each callback's."""
    callbacks = [(f"callbacks.{name}", node) for name, node in (cfg.get("callbacks") or {}).items()] if with_callbacks else []
    nodes = [(group, cfg.get(group)) for group in BUILT_GROUPS] + callbacks
    return [(key, node) for key, node in nodes if isinstance(node, DictConfig) and isinstance(node.get("_target_"), str)]


# Keys Hydra's instantiate reads itself, never passed to the constructor.
_INSTANTIATE_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})


def check_known_keys(cfg: DictConfig) -> None:
    """A key the group's class does not take (`+trainer.max_epoch=3`, or a preset's `model.features`
    kept after `model=popularity`) is one line naming the closest valid key, before any data is loaded;
    otherwise the constructor's TypeError comes after the data, with an empty run folder left behind."""
    for group, node in _built_nodes(cfg):
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
    """Names the module logs during fit with this config (module.py, rerank/module.py): what a monitor may name."""
    if is_reranker(cfg):
        return [f"val/{RERANK_STAGE}/{metric}@{k}" for metric in METRIC_NAMES for k in cfg.eval.ks] + ["train/loss"]
    loss_class = get_class(cfg.loss._target_)
    names = [f"val/{metric}@{k}" for metric in METRIC_NAMES for k in cfg.eval.ks] + ["train/loss"]
    return names + [f"val/{name}" for kind in loss_class.prediction_metrics for name in kind.names]


def check_monitors(cfg: DictConfig) -> None:
    """Every monitor (`monitor`, callbacks, plateau scheduler, optimized_metric) must name a metric this
    run makes, watched in the right direction. Keys naming the same missing metric are reported
    together; a key that only follows `monitor` (the default) is reported as `monitor.metric`/`mode`,
    the keys a user sets."""
    logged = logged_metrics(cfg)
    # optimized_metric is read from metrics.json: validation and test figures, no training loss.
    predicted = [f"test/{name}" for kind in get_class(cfg.loss._target_).prediction_metrics for name in kind.names]
    test_names = [f"test/{metric}@{k}" for metric in (*METRIC_NAMES, *CATALOGUE_METRIC_NAMES) for k in cfg.eval.ks] + predicted
    if is_reranker(cfg):
        test_names = [name.replace("val/", "test/", 1) for name in logged if name.startswith("val/")]
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
    lower = monitor.lower_is_better(cfg.loss._target_)  # watched with mode=min: the training loss and errors
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


# ModelCheckpoint settings that save on another schedule than validation's, or not at all (None: unset). Any of
# them set, even every_n_train_steps=0, makes Lightning read an unset every_n_epochs as 0: no checkpoint at all.
_OFF_SCHEDULE = {"every_n_epochs": (None, 1), "every_n_train_steps": (None,), "train_time_interval": (None,)}


def check_eval_candidates(cfg: DictConfig) -> None:
    """eval.candidates=cold ranks only the items new in valid and test, which only data.split=cold_items makes
    (pre-split files drop held-out items absent from train; data=prepared has no such split), and masks them in
    one process's score rows, which trainer=sharded's merged row blocks never hold. The data's copy of the key
    (data.eval_candidates, what its DataModule reads) follows eval.candidates and is never set apart from it."""
    candidates = config_value(cfg, "eval.candidates")
    followed = config_value(cfg, "data.eval_candidates")
    if followed not in (_ABSENT, candidates):
        raise ConfigError(
            f"data.eval_candidates={shown(followed)} differs from eval.candidates={shown(candidates)}: "
            "set eval.candidates, which it follows"
        )
    if candidates != "cold":
        return
    split = cfg.data.get("split", "its own (data=prepared)")
    if split != "cold_items":
        raise ConfigError(
            f"eval.candidates=cold ranks only items held out of training, and data.split={split} holds none out: "
            "set data.split=cold_items, or eval.candidates=all"
        )
    given = [key for key in ("train_path", "valid_path", "test_path") if cfg.data.get(key)]
    if given:
        raise ConfigError(
            f"eval.candidates=cold with pre-split files (data.{given[0]}): their held-out items absent from train are "
            "left out, so none is new; use data.path with data.split=cold_items, or eval.candidates=all"
        )
    if holds_tables(cfg):
        raise ConfigError("eval.candidates=cold is not implemented with trainer=sharded; train in one process, or eval.candidates=all")


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
        where = "is a file" if blocking == Path(str(path)) else f"cannot be created: {shown_path(blocking)} is a file"
        raise ConfigError(f"{key}={shown_path(path)} {where}; point it at a folder (or a path that does not exist yet)")


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
