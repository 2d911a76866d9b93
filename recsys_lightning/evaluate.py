"""Entry point: recompute a run's test (or validation) metrics from its checkpoint and data config.

    python -m recsys_lightning.evaluate run_dir=outputs/runs/<run>

The data is rebuilt from the run's own `.hydra/config.yaml` (same source, split and seed), the model
from the checkpoint (loaded with weights_only=True), and scored by the same Lightning test loop as in
training, so the figures must equal the run's metrics.json; the table shows both.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, TextIO

import hydra
import pandas as pd
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys_lightning.config import register_resolvers
from recsys_lightning.data.datamodule import InteractionDataModule
from recsys_lightning.errors import ConfigError, RecsysError, exit_with_message, first_line
from recsys_lightning.module import RecommenderModule
from recsys_lightning.safe_config import checked_component, checked_module_hyper_parameters
from recsys_lightning.validation import TRAINING_RULES, check_evaluate_config, check_rules
from recsys_lightning.serving.checkpoint import find_checkpoint, load_checkpoint

log = logging.getLogger(__name__)
register_resolvers()

SPLITS = ("test", "valid")
# Data config keys that name files or folders (csv and movielens); relative ones resolve from the training cwd.
DATA_PATH_KEYS = ("path", "train_path", "valid_path", "test_path", "items_path", "data_dir")


def evaluate(run_dir: str | Path, checkpoint: str = "best", split: str = "test", accelerator: str = "auto") -> dict[str, float]:
    """Metrics of `split` for the run's checkpoint, named as in metrics.json (test/ndcg@10, ...)."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: use test or valid")
    run_dir = Path(run_dir)
    path = find_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path)
    hyper_parameters = checked_module_hyper_parameters(state.get("hyper_parameters"), str(path))
    datamodule: InteractionDataModule = instantiate(recorded_data_config(run_dir))
    datamodule.setup("test")
    trained_shape = (hyper_parameters["num_users"], hyper_parameters["num_items"])
    if trained_shape != (datamodule.num_users, datamodule.num_items):
        raise ConfigError(f"{path}: trained on {trained_shape[0]} users x {trained_shape[1]} items, but the run's data now has "
                          f"{datamodule.num_users} x {datamodule.num_items}; the data changed since training")  # fmt: skip
    if split == "test" and not datamodule.has_test:
        raise ConfigError(f"{run_dir}: the run's split has no test part; use split=valid")
    module = RecommenderModule(**hyper_parameters)
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as error:
        raise ConfigError(f"{path}: its weights do not fit its model config ({first_line(error)})") from error
    trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    run, prefix = (trainer.test, "test/") if split == "test" else (trainer.validate, "val/")
    run(module, datamodule=datamodule, verbose=False)
    # callback_metrics, as train.py records them: validation metrics reach no logger outside fit.
    return {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith(prefix)}


def recorded_data_config(run_dir: Path) -> dict[str, Any]:
    """The run's data config from `.hydra/config.yaml`, resolved and checked like a checkpoint's.

    Relative data paths are taken from the folder training ran in (`.hydra/hydra.yaml` records it),
    so evaluate works from any working directory.
    """
    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{config_path}: missing; evaluate needs the run's config to rebuild its data split")
    try:
        data = OmegaConf.to_container(OmegaConf.load(config_path).data, resolve=True)
    except Exception as error:  # YAML syntax, a missing key, an interpolation that cannot resolve
        raise ConfigError(f"{config_path}: cannot read its data config ({first_line(error)}); the run folder is damaged") from error
    data = checked_component("data", data, str(config_path))
    try:
        check_rules(OmegaConf.create({"data": data}), {key: rule for key, rule in TRAINING_RULES.items() if key.startswith("data.")})
    except ConfigError as error:
        raise ConfigError(f"{config_path}: {error}") from error
    training_cwd = _training_cwd(run_dir)
    for key in DATA_PATH_KEYS:
        if isinstance(data.get(key), str) and training_cwd is not None:
            data[key] = str(training_cwd / Path(data[key]).expanduser())
    return data


def _training_cwd(run_dir: Path) -> Path | None:
    try:
        cwd = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.cwd
    except Exception:  # an older or edited run folder: relative paths then resolve from here
        return None
    return Path(cwd) if isinstance(cwd, str) else None


def compare_with_recorded(evaluated: dict[str, float], run_dir: str | Path, tolerance: float) -> pd.DataFrame:
    """One row per metric: evaluated, recorded in metrics.json (NaN if absent), and whether they agree."""
    metrics_path = Path(run_dir) / "metrics.json"
    recorded: dict[str, Any] = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    rows = []
    for name, value in evaluated.items():
        before = recorded.get(name, math.nan)
        rows.append({"metric": name, "evaluated": value, "metrics.json": before, "equal": abs(value - before) <= tolerance})
    return pd.DataFrame(rows)


def report(table: pd.DataFrame, out: TextIO = sys.stdout) -> None:
    print(table.to_string(index=False, float_format=lambda value: f"{value:.6f}"), file=out)
    differing = table[~table["equal"]]
    if differing.empty:
        print(f"all {len(table)} metrics equal metrics.json", file=out)
    else:
        print(f"{len(differing)} of {len(table)} metrics differ from metrics.json: {', '.join(differing['metric'])}", file=out)


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        check_evaluate_config(cfg)
        evaluated = evaluate(cfg.run_dir, cfg.checkpoint, cfg.split, cfg.accelerator)
    except RecsysError as error:
        exit_with_message(error)
    report(compare_with_recorded(evaluated, cfg.run_dir, cfg.tolerance))


if __name__ == "__main__":
    main()
