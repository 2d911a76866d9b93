"""What Hydra recorded in a run folder (`.hydra/config.yaml`, `hydra.yaml`, a sweep's `multirun.yaml`), read
as untrusted: plain YAML of bounded size, and a data config held to what `conf/data/` offers before anything
is built from it (evaluate rebuilds a run's split this way).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from recsys_lightning.errors import ConfigError, first_line
from recsys_lightning.runs.safe_config import checked_component

RUN_YAML_LIMIT = 1 << 20  # bytes; Hydra's config.yaml, hydra.yaml and multirun.yaml are a few KiB
# Data config keys that name files or folders (csv and movielens); relative ones resolve from the training cwd.
DATA_PATH_KEYS = ("path", "train_path", "valid_path", "test_path", "items_path", "data_dir")
MOVIELENS_TARGET = "recsys_lightning.data.movielens.MovieLensDataModule"


def read_run_yaml(path: Path) -> DictConfig:
    """A run folder's YAML file as a DictConfig, or one line naming the file.

    Hydra writes plain YAML; a file over 1 MiB or one with anchors or aliases was not written by it,
    and aliases nested in aliases ("billion laughs") expand exponentially. The token scan that finds
    them takes linear time and builds nothing.
    """
    if not path.is_file() or path.stat().st_size > RUN_YAML_LIMIT:
        raise ConfigError(f"{path}: not a regular file of at most 1 MiB, so not a config Hydra wrote; the run folder is damaged")
    try:
        text = path.read_text(encoding="utf-8")
        if any(isinstance(token, (yaml.AnchorToken, yaml.AliasToken)) for token in yaml.scan(text, Loader=yaml.SafeLoader)):
            raise ConfigError(
                f"{path}: holds YAML anchors or aliases, which Hydra never writes; refusing to expand them, the run folder was altered"
            )
        config = OmegaConf.create(text)
    except ConfigError:
        raise
    except Exception as error:  # undecodable bytes, YAML syntax, nesting too deep, values OmegaConf cannot hold
        raise ConfigError(
            f"{path}: cannot be read ({type(error).__name__}: {first_line(error, 120)}); the run folder is damaged"
        ) from error
    if not isinstance(config, DictConfig):
        raise ConfigError(f"{path}: holds a YAML {type(config).__name__}, not a mapping; the run folder is damaged")
    return config


def recorded_data_config(run_dir: Path) -> dict[str, Any]:
    """The run's data config from `.hydra/config.yaml`, resolved and checked like a checkpoint's.

    Relative data paths are taken from the folder training ran in (`.hydra/hydra.yaml` records it),
    so evaluate works from any working directory. The folder is untrusted, so MovieLens is built
    with download=False: a recorded data_dir is read, never created or written to.
    """
    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{config_path}: missing; evaluate needs the run's config to rebuild its data split")
    recorded = read_run_yaml(config_path)
    try:
        data = OmegaConf.to_container(recorded.data, resolve=True)
    except Exception as error:  # YAML syntax, a missing key, an interpolation that cannot resolve
        raise ConfigError(f"{config_path}: cannot read its data config ({first_line(error)}); the run folder is damaged") from error
    data = checked_component("data", data, str(config_path))  # with the ranges its class declares
    cwd = training_cwd(run_dir)
    for key in DATA_PATH_KEYS:
        if isinstance(data.get(key), str) and cwd is not None:
            data[key] = str(cwd / Path(data[key]).expanduser())
    if data.get("_target_") == MOVIELENS_TARGET:
        data["download"] = False
    return data


def training_cwd(run_dir: Path) -> Path | None:
    """The folder training ran in, which `.hydra/hydra.yaml` records (None without that record)."""
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.exists():  # an older or edited run folder: relative paths then resolve from here
        return None
    cwd = OmegaConf.select(read_run_yaml(path), "hydra.runtime.cwd", default=None, throw_on_resolution_failure=False)
    return Path(cwd) if isinstance(cwd, str) else None
