"""conf/ as the code reads it: the OmegaConf resolvers the configs rely on, a group's options, and the
groups and keys a command line may override."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recsys_lightning import models
from recsys_lightning.errors import ConfigError
from recsys_lightning.monitor import loss_monitor, metric_mode, sweep_direction
from recsys_lightning.run_names import run_label, run_name, safe_name

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@cache
def group_options(group: str) -> dict[str, dict[str, Any]]:
    """The options of `conf/<group>/` by name, as written (unresolved): what `group=<name>` can pick."""
    paths = sorted((PROJECT_ROOT / "conf" / group).glob("*.yaml"))
    return {path.stem: OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {} for path in paths}


def check_override_keys(arguments: Sequence[str], config_name: str) -> None:
    """A command line's `key=value` whose first part is neither a config group nor a key of
    `conf/<config_name>.yaml` (`modle=ncf`), or names a key the group's chosen options do not hold
    (`data=prepared data.pth=x`), is a ConfigError naming the closest one, before Hydra answers with
    advice to add the misspelt key (`+modle=ncf`) over several lines. `+`/`~` overrides and flags are
    left to Hydra."""
    if any(argument.startswith(("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir")) for argument in arguments):
        return  # another config: its names are not these
    known = _top_level_names(config_name) | _global_option_keys(arguments)
    for argument in arguments:
        if argument.startswith(("-", "+", "~")) or "=" not in argument:
            continue
        key, _, value = argument.partition("=")
        first = re.split(r"[./@]", key.strip(), maxsplit=1)[0]
        if first in known:
            _check_group_key(key.strip(), value, arguments, config_name)
            continue
        close = difflib.get_close_matches(first, sorted(known), n=1)
        if close:
            hint = f"did you mean {close[0]}{key.strip()[len(first) :]}={value}?"
        else:
            hint = f"the groups and keys are {', '.join(sorted(known))}; a key of your own is added with +{argument}"
        raise ConfigError(f"{argument}: no config group or key {first!r}; {hint}")


def _check_group_key(key: str, value: str, arguments: Sequence[str], config_name: str) -> None:
    """`<group>.<name>=value` where every option of `group` the command line picks (or the config's default)
    lacks `name`: Hydra would refuse it over several lines. Left to Hydra where the options cannot be
    known here: a `_global_` option (an experiment, debug) picked on the command line may change them."""
    group, dot, rest = key.partition(".")
    name = re.split(r"[./@]", rest, maxsplit=1)[0]
    if not dot or "@" in group or not name or group == "hydra" or not (PROJECT_ROOT / "conf" / group).is_dir():
        return
    chosen = {option.split("=", 1)[0].removeprefix("+"): option.split("=", 1)[1] for option in arguments if "=" in option}
    if any(_is_global_option(other, options) for other, options in chosen.items() if "." not in other and "/" not in other):
        return
    picked = chosen.get(group, _default_options(config_name).get(group))
    if picked is None:
        return
    for option in picked.split(","):
        names = _option_keys(group, option.strip())
        if names is None or name in names:
            continue
        close = difflib.get_close_matches(name, sorted(names), n=1)
        hint = f"did you mean {group}.{close[0]}{rest[len(name) :]}={value}?" if close else f"its keys are {', '.join(sorted(names))}"
        if not names:
            hint = f"it takes no keys; pick another {group} option"
        raise ConfigError(f"{key}={value}: {group}={option.strip()} has no key {name!r}; {hint}")


def _global_option_keys(arguments: Sequence[str]) -> frozenset[str]:
    """The top-level keys the `_global_` options a command line picks add (`experiment=ml100k_reranker` adds
    `rerank` and `retrieval`): keys of the composed config, so `rerank.holdout=0.25` beside it is no typo."""
    names: set[str] = set()
    for argument in arguments:
        group, _, options = argument.partition("=")
        if argument.startswith(("-", "+", "~")) or "." in group or not (PROJECT_ROOT / "conf" / group).is_dir():
            continue
        for option in options.split(","):
            path = PROJECT_ROOT / "conf" / group / f"{option.strip()}.yaml"
            if _is_global_option(group, option):
                names |= set(OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}) - {"defaults"}
    return frozenset(names)


def _is_global_option(group: str, options: str) -> bool:
    """Whether `group=options` picks a `# @package _global_` file, which may change any other group."""
    paths = [PROJECT_ROOT / "conf" / group / f"{option.strip()}.yaml" for option in options.split(",")]
    return any(path.is_file() and "@package _global_" in path.read_text().split("\n", 1)[0] for path in paths)


@cache
def _default_options(config_name: str) -> dict[str, str]:
    """The option `conf/<config_name>.yaml` picks for each group by default (`data: movielens`)."""
    config = OmegaConf.to_container(OmegaConf.load(PROJECT_ROOT / "conf" / f"{config_name}.yaml"), resolve=False) or {}
    entries = [next(iter(entry.items())) for entry in config.get("defaults", []) if isinstance(entry, dict) and entry]
    return {str(group): str(option) for group, option in entries if option is not None and "/" not in str(group)}


@cache
def _option_keys(group: str, option: str) -> frozenset[str] | None:
    """The top-level keys of `conf/<group>/<option>.yaml` with those its defaults list adds (`/data_split@_here_`,
    another option of the group); None where a default is of a form not followed here, so nothing is refused."""
    path = PROJECT_ROOT / "conf" / group / f"{option}.yaml"
    if not path.is_file():
        return None
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    names = set(config) - {"defaults"}
    for entry in config.get("defaults", []):
        if entry == "_self_":
            continue
        if isinstance(entry, str) and entry.startswith("/") and entry.endswith("@_here_"):
            included = PROJECT_ROOT / "conf" / f"{entry[1 : -len('@_here_')]}.yaml"
            names |= set(OmegaConf.to_container(OmegaConf.load(included), resolve=False) or {}) if included.is_file() else set()
            continue
        inherited = _option_keys(group, entry) if isinstance(entry, str) and "/" not in entry and "@" not in entry else None
        if inherited is None:
            return None
        names |= inherited
    return frozenset(names)


@cache
def _top_level_names(config_name: str) -> frozenset[str]:
    """The config groups `conf/<config_name>.yaml` composes (its defaults list) and its own top-level keys."""
    config = OmegaConf.to_container(OmegaConf.load(PROJECT_ROOT / "conf" / f"{config_name}.yaml"), resolve=False) or {}
    groups = {
        re.split(r"[/@]", str(next(iter(entry))).removeprefix("override "), maxsplit=1)[0]
        for entry in config.get("defaults", [])
        if isinstance(entry, dict) and entry
    }
    return frozenset(groups | set(config) | {"hydra"}) - {"defaults"}


def register_resolvers() -> None:
    """`${project_root:}` is the folder holding conf/, so runs land in the same place whatever the cwd;
    `${run_label:<task overrides>,<excluded keys>}` is `_<the overrides, shortened>` or nothing, and
    `${safe_name:<name>}` the name with what a folder name should not hold replaced, and
    `${run_name:<model>,<loss>,<sampler>,<data>}` (the options chosen) what was trained (run_names.py);
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
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", _run_name)
    for name, resolver in (("loss_monitor", loss_monitor), ("metric_mode", metric_mode), ("sweep_direction", sweep_direction)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def _run_label(overrides: Any, excluded: Any) -> str:
    """The overrides as typed: resolving them would put `${oc.env:...}` values into folder names."""
    as_typed = OmegaConf.to_container(overrides, resolve=False) if OmegaConf.is_config(overrides) else overrides
    return run_label([str(override) for override in as_typed], [str(key) for key in excluded])


def _run_name(model: str, loss: str, sampler: str, data: str, *, _root_: DictConfig) -> str:
    """run_name() of the config being composed: closed form from the model's class, the file from data.path
    (or data.train_path) when data=csv, the folder's name when data=prepared."""
    data_file = OmegaConf.select(_root_, "data.path", default=None) or OmegaConf.select(_root_, "data.train_path", default=None)
    return run_name(
        model,
        loss,
        sampler,
        _fitted_in_closed_form(OmegaConf.select(_root_, "model._target_", default="")),
        data_file if data in ("csv", "prepared") else None,
    )


def _fitted_in_closed_form(target: object) -> bool:
    """Whether `target` names one of this package's closed-form models; only that package's own names are looked up."""
    package, _, name = str(target).rpartition(".")
    model = getattr(models, name, None) if package == models.__name__ else None
    return isinstance(model, type) and issubclass(model, models.ClosedFormRecommender)
