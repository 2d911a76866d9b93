"""An `experiment=` preset is tuned for the model, loss, sampler and optimizer it pins: its other keys
(learning rate, l2, batch size, widths) were chosen for that combination only.

A user who swaps one of them on the command line (`experiment=ml100k_ratings loss=bpr`) would
otherwise train the new choice with values tuned for the old one, silently (BPR with MSE's l2 and
learning rate). Such a run is refused in one line that names the preset, the choice it pinned and the
tuned keys that would carry over, and says what to type: drop `experiment=` (the choice's own
defaults are what it was tuned with) or set each carried key yourself.
"""

from __future__ import annotations

from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from recsys_lightning.config import PROJECT_ROOT, group_options
from recsys_lightning.errors import ConfigError
from recsys_lightning.ranges import shown

# The groups whose option a preset's tuned keys depend on. `data` is not one: a preset's settings are
# a fair start on other data. `scheduler` and `trainer` are settings of the schedule, not of the model.
TUNED_FOR = ("model", "loss", "sampler", "optimizer")
MAX_LISTED = 6  # carried keys a message lists before "..."


def check_preset_choices(cfg: DictConfig) -> None:
    """Refuse a group option the user chose over the one the composed `experiment=` preset pins, while
    keys the preset tuned for its own choice would still apply. Outside a Hydra run (no record of the
    choices) there is nothing to compare."""
    choices, typed = _choices_and_overrides(cfg)
    preset = choices.get("experiment")
    if not preset or preset not in group_options("experiment"):
        return
    pins = preset_pins(preset)
    changed = [group for group in TUNED_FOR if choices.get(group) and choices[group] != pins.get(group)]
    if not changed:
        return
    tuned = {key: value for key, value in preset_keys(preset).items() if key not in typed}
    if not tuned:  # the user set every tuned key: nothing is carried over unseen
        return
    chosen = " ".join(f"{group}={choices[group]}" for group in changed)
    pinned = " ".join(f"{group}={pins.get(group)}" for group in changed)
    carried = ", ".join(f"{key}={shown(value)}" for key, value in list(tuned.items())[:MAX_LISTED])
    more = ", ..." if len(tuned) > MAX_LISTED else ""
    matching = [name for name in group_options("experiment") if all(preset_pins(name).get(g) == choices.get(g) for g in TUNED_FOR)]
    instead = f", or use a preset tuned for it: experiment={' or experiment='.join(matching)}" if matching else ""
    raise ConfigError(
        f"experiment={preset} is tuned for {pinned}, and {chosen} would train with its tuned {carried}{more}; "
        f"drop experiment= to train {chosen} with its own defaults, or set each of those keys yourself{instead}"
    )


def replaced_preset_key(cfg: DictConfig, group: str, key: str) -> str | None:
    """Why `<group>.<key>`, which the group's class does not take, is in the config, when the composed
    preset set it for the option the user replaced (`experiment=ml100k_ncf model=mf`: ncf's
    `model.dropout`); None otherwise. The user never typed that key, so the message names the preset."""
    choices, typed = _choices_and_overrides(cfg)
    preset = choices.get("experiment")
    if not preset or preset not in group_options("experiment") or f"{group}.{key}" in typed:
        return None
    pinned, chosen = preset_pins(preset).get(group), choices.get(group)
    if f"{group}.{key}" not in preset_keys(preset) or not chosen or chosen == pinned:
        return None
    return (
        f"experiment={preset} sets {group}.{key}, which {group}={chosen} does not take: {group}={chosen} replaced the "
        f"preset's {group}={pinned}; use the preset's {group} (drop {group}=) or drop experiment="
    )


def preset_pins(preset: str) -> dict[str, str]:
    """The option of each group a preset trains with: its own `override /<group>: <option>`, else the
    default of conf/config.yaml."""
    pins = _defaults(OmegaConf.to_container(OmegaConf.load(PROJECT_ROOT / "conf" / "config.yaml"), resolve=False).get("defaults"))
    return pins | _defaults(group_options("experiment")[preset].get("defaults"))


def preset_keys(preset: str) -> dict[str, Any]:
    """Every key a preset sets (dotted, leaves only), as written: its tuned values."""
    body = {name: value for name, value in group_options("experiment")[preset].items() if name != "defaults"}
    return dict(_leaves(body, ""))


def _leaves(node: Any, prefix: str) -> list[tuple[str, Any]]:
    if not isinstance(node, dict):
        return [(prefix, node)]
    return [leaf for name, value in node.items() for leaf in _leaves(value, f"{prefix}{name}" if not prefix else f"{prefix}.{name}")]


def _defaults(entries: Any) -> dict[str, str]:
    pins: dict[str, str] = {}
    for entry in entries if isinstance(entries, list) else []:
        for name, option in entry.items() if isinstance(entry, dict) else []:
            group = str(name).removeprefix("override ").strip().lstrip("/")
            if isinstance(option, str):
                pins[group] = option
    return pins


def _choices_and_overrides(cfg: DictConfig) -> tuple[dict[str, Any], set[str]]:
    """Hydra's record of the group options chosen and the keys typed on the command line (`+`/`~`/`++`
    stripped): from the running Hydra job, else from a config composed with its `hydra` node."""
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
    elif isinstance(cfg.get("hydra"), DictConfig):
        hydra_cfg = cfg.hydra
    else:
        return {}, set()
    choices = OmegaConf.to_container(hydra_cfg.runtime.choices, resolve=False) or {}
    typed = {str(override).split("=", 1)[0].lstrip("+~") for override in hydra_cfg.overrides.task}
    return choices, typed
