"""Configs read back from disk (a checkpoint's hyper-parameters, a run's `.hydra/config.yaml`) are
untrusted: `hydra.utils.instantiate` would build any `_target_` they name, at any depth.

Before such a config is built, `checked_component` holds it to what the project itself offers: the
top-level `_target_` must be one the package lists for the matching group (runs/offered.py, which a test
holds equal to what `conf/<group>/` names, so serving needs no conf/), and every argument must be a scalar
or a list of scalars. A nested mapping, a Hydra directive (`_args_`, `_recursive_`, ...) or an interpolation
is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from recsys_lightning.errors import ConfigError, quote
from recsys_lightning.ranges import argument_names, constructor_rules
from recsys_lightning.runs.offered import offered_targets
from recsys_lightning.validation import TRAINING_RULES

TARGET, PARTIAL = "_target_", "_partial_"
PARTIAL_GROUPS = ("optimizer", "scheduler")  # the module supplies their first argument (parameters, optimizer)
# Arguments the code that builds a group's object passes itself; a recorded config must not name them.
SUPPLIED = {"model": frozenset({"num_users", "num_items"}), "optimizer": frozenset({"params"}), "scheduler": frozenset({"optimizer"})}
SCALARS = (str, int, float, bool, type(None))
MAX_LIST_DEPTH = 2  # e.g. a list of hidden sizes, or split ratios


def checked_component(group: str, node: Any, source: str) -> dict[str, Any]:
    """A plain copy of `node` that is safe to instantiate, or a ConfigError naming `source` and the key.

    `group` is the config group whose YAML files say which targets are allowed (model, loss, ...).
    """
    where = f"{source}: {group}"
    if not isinstance(node, Mapping):
        raise ConfigError(f"{where} is {quote(node)}, not a mapping with a _target_; refusing to build it")
    target = node.get(TARGET)
    allowed = offered_targets(group)
    if target not in allowed:
        raise ConfigError(
            f"{where}._target_ is {quote(target)}, which no conf/{group}/*.yaml offers ({', '.join(sorted(allowed))}); refusing to build it"
        )
    partial = group in PARTIAL_GROUPS
    if node.get(PARTIAL, False) is not partial:
        raise ConfigError(
            f"{where}._partial_ is {quote(node.get(PARTIAL))}; a {group} config is built "
            f"{'partially (_partial_: true)' if partial else 'whole (no _partial_)'}; refusing to build it"
        )
    accepted = argument_names(target)
    if accepted is not None:
        accepted -= SUPPLIED.get(group, frozenset())
    checked: dict[str, Any] = {TARGET: target}
    for key, value in node.items():
        if key in (TARGET, PARTIAL):
            checked[key] = value
            continue
        if not isinstance(key, str) or key.startswith("_") or (accepted is not None and key not in accepted):
            raise ConfigError(f"{where} has the key {quote(key)}, which {target} does not take; refusing to build it")
        checked[key] = checked_value(value, f"{where}.{key}")
    _check_ranges(group, checked, where)
    return checked


def _check_ranges(group: str, checked: dict[str, Any], where: str) -> None:
    """The same ranges a training config must respect, e.g. model.dim >= 1: those its class declares (ranges.py),
    and for a class of torch's the training table (validation.TRAINING_RULES)."""
    prefix = f"{group}."
    table = {key[len(prefix) :]: rule for key, rule in TRAINING_RULES.items() if key.startswith(prefix)}
    rules = constructor_rules(checked[TARGET]) | table
    for key, rule in rules.items():
        value = checked.get(key, rule)
        if value is not rule and not rule.accepts(value):
            raise ConfigError(f"{where}.{key}={quote(value)}: must be {rule}; refusing to build it")


def checked_value(value: Any, where: str, depth: int = 0) -> Any:
    """A scalar or a (shallow) list of scalars; never a mapping, an object or an interpolation."""
    if isinstance(value, (list, tuple)) and depth < MAX_LIST_DEPTH:
        return [checked_value(element, f"{where}[{position}]", depth + 1) for position, element in enumerate(value)]
    if isinstance(value, Mapping):
        nested = " carrying a _target_" if TARGET in value else ""
        raise ConfigError(f"{where} is a nested mapping{nested}; arguments read from disk must be numbers, strings or lists")
    if not isinstance(value, SCALARS):
        raise ConfigError(f"{where} is a {type(value).__name__}; arguments read from disk must be numbers, strings or lists")
    if isinstance(value, str) and "${" in value:
        raise ConfigError(f"{where} is the interpolation {quote(value)}; a recorded config must hold resolved values")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} is {value}; a recorded config must hold finite numbers")
    return value


def checked_int(value: Any, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where} is {quote(value)}, not an integer >= {minimum}")
    return value


MODULE_COMPONENTS = ("model", "loss", "sampler", "optimizer")
MODULE_KEYS = frozenset({"num_users", "num_items", *MODULE_COMPONENTS, "scheduler", "ks", "seed"})


# Where re-rankers live (recsys_lightning/rerank/): their runs are told apart by name, never imported here.
RERANKER_PACKAGE = "recsys_lightning.rerank."


def checked_module_hyper_parameters(hyper_parameters: Any, source: str) -> dict[str, Any]:
    """A checkpoint's `hyper_parameters`, checked key by key, ready for `RecommenderModule(**...)`."""
    if not isinstance(hyper_parameters, Mapping):
        raise ConfigError(f"{source}: hyper_parameters is {quote(hyper_parameters)}, not a mapping; not a checkpoint of this project")
    model = hyper_parameters.get("model")
    if isinstance(model, Mapping) and str(model.get("_target_", "")).startswith(RERANKER_PACKAGE):
        raise ConfigError(
            f"{source}: a re-ranker's run (experiment=ml100k_reranker), which evaluate and recommend (user_id= or users=) load "
            "only with retrieval.run_dir=<the retriever it was trained with>; pair scores and similar items do not load it"
        )
    unknown = sorted(str(key) for key in hyper_parameters if key not in MODULE_KEYS)
    if unknown:
        raise ConfigError(
            f"{source}: hyper_parameters has unknown keys ({', '.join(quote(key) for key in unknown[:5])}); "
            "not a checkpoint of this version of the project"
        )
    checked: dict[str, Any] = {
        "num_users": checked_int(hyper_parameters.get("num_users"), f"{source}: num_users", minimum=1),
        "num_items": checked_int(hyper_parameters.get("num_items"), f"{source}: num_items", minimum=1),
        "seed": checked_int(hyper_parameters.get("seed", 0), f"{source}: seed"),
    }
    for group in MODULE_COMPONENTS:
        checked[group] = checked_component(group, hyper_parameters.get(group), source)
    ks = hyper_parameters.get("ks", [10, 20])
    if not isinstance(ks, (list, tuple)) or not ks:
        raise ConfigError(f"{source}: ks is {quote(ks)}, not a list of cut-offs")
    checked["ks"] = [checked_int(k, f"{source}: ks", minimum=1) for k in ks]
    scheduler = checked["scheduler"] = hyper_parameters.get("scheduler")
    if scheduler is not None:
        if not isinstance(scheduler, Mapping):
            raise ConfigError(f"{source}: scheduler is {quote(scheduler)}, not a mapping")
        checked["scheduler"] = {
            key: checked_component("scheduler", value, source) if key == "scheduler" else checked_value(value, f"{source}: scheduler.{key}")
            for key, value in scheduler.items()
        }
    return checked
