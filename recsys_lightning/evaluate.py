"""Entry point: recompute a run's test (or validation) metrics from its checkpoint and data config.

    python -m recsys_lightning.evaluate run_dir=outputs/runs/<run>
    python -m recsys_lightning.evaluate run_dir=outputs/runs/<reranker> retrieval.run_dir=outputs/runs/<retriever>

The data is rebuilt from the run's own `.hydra/config.yaml` (same source, split and seed), the model
from the checkpoint (loaded with weights_only=True), and scored by the same Lightning test loop as in
training, so the figures must equal the run's metrics.json; the table shows both. With a retriever
(`retrieval.run_dir`), the retriever alone, the run's model alone and the two stages are compared instead.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any, TextIO

import hydra
import pandas as pd
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys_lightning.checkpoint_file import (
    BEST_CHECKPOINT_KEY,
    CATALOGUE_KEY,
    catalogue_from_checkpoint,
    find_checkpoint,
    load_checkpoint,
    read_run_metrics,
    read_run_yaml,
)
from recsys_lightning.config import check_override_keys, register_resolvers
from recsys_lightning.console import quiet_library_noise
from recsys_lightning.data.datamodule import InteractionDataModule
from recsys_lightning.errors import ConfigError, RecsysError, exit_with_message, first_line
from recsys_lightning.models.weights import load_error_detail
from recsys_lightning.module import RecommenderModule
from recsys_lightning.resume import same_training_data
from recsys_lightning.safe_config import checked_component, checked_module_hyper_parameters
from recsys_lightning.threads import apply_thread_count
from recsys_lightning.trained_run import check_weights_fit, load_trained, model_weights
from recsys_lightning.two_stage import check_same_data, compare_stages, find_retriever
from recsys_lightning.validation import TRAINING_RULES, check_evaluate_config, check_rules

log = logging.getLogger(__name__)
register_resolvers()
quiet_library_noise()

SPLITS = ("test", "valid")
# Data config keys that name files or folders (csv and movielens); relative ones resolve from the training cwd.
DATA_PATH_KEYS = ("path", "train_path", "valid_path", "test_path", "items_path", "data_dir")
MOVIELENS_TARGET = "recsys_lightning.data.movielens.MovieLensDataModule"
METRICS_REMEDY = "evaluate compares with it: restore the file, or retrain the run"


class MetricsDiffer(RecsysError):
    """The checkpoint metrics.json names no longer scores what metrics.json records: the data, the
    code or a file of the run changed since training, so one of the two cannot be trusted."""


def evaluate(run_dir: str | Path, checkpoint: str = "best", split: str = "test", accelerator: str = "auto") -> dict[str, float]:
    """Metrics of `split` for the run's checkpoint, named as in metrics.json (test/ndcg@10, ...)."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: use test or valid")
    run_dir = Path(run_dir)
    path = find_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path)
    hyper_parameters = checked_module_hyper_parameters(state.get("hyper_parameters"), str(path))
    if CATALOGUE_KEY not in state:
        raise ConfigError(
            f"{path}: carries no record of the data it was trained on (no catalogue; it predates this version), "
            "so evaluate cannot tell its data from another's; retrain the run to evaluate it"
        )
    catalogue = catalogue_from_checkpoint(state[CATALOGUE_KEY], path)
    check_weights_fit(hyper_parameters, model_weights(state["state_dict"], path), path)  # before anything is built from its config
    datamodule: InteractionDataModule = instantiate(recorded_data_config(run_dir))
    datamodule.setup("test")
    trained_shape = (hyper_parameters["num_users"], hyper_parameters["num_items"])
    if trained_shape != (datamodule.num_users, datamodule.num_items):
        raise ConfigError(
            f"{path}: trained on {trained_shape[0]} users x {trained_shape[1]} items, but the run's data now has "
            f"{datamodule.num_users} x {datamodule.num_items}; the data changed since training"
        )
    if not same_training_data(catalogue, datamodule.training_data):
        raise ConfigError(
            f"{path}: trained on other data than {run_dir}/.hydra/config.yaml rebuilds (same sizes, but its users, "
            "items or training pairs differ); evaluate a checkpoint with the run folder it came from"
        )
    if split == "test" and not datamodule.has_test:
        raise ConfigError(f"{run_dir}: the run's split has no test part; use split=valid")
    module = RecommenderModule(**hyper_parameters, data=datamodule.training_data)
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as error:  # a value a model's own load hook refuses (ItemKNN's neighbours out of range)
        raise ConfigError(f"{path}: its weights do not fit its model config ({load_error_detail(error)})") from error
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    run, prefix = (trainer.test, "test/") if split == "test" else (trainer.validate, "val/")
    run(module, datamodule=datamodule, verbose=False)
    # callback_metrics, as train.py records them: validation metrics reach no logger outside fit.
    return {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith(prefix)}


def evaluate_two_stage(
    run_dir: str | Path,
    retriever_dir: str | Path,
    candidates: int,
    checkpoint: str = "best",
    split: str = "test",
    accelerator: str = "auto",
) -> tuple[pd.DataFrame, str]:
    """The stages side by side (see `compare_stages`) and a heading naming both runs."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: use test or valid")
    # Loaded on the CPU, where their catalogues are compared and ranked; the models move to the device.
    reranker = load_trained(find_checkpoint(run_dir, checkpoint))
    retriever = load_trained(find_retriever(retriever_dir, "retrieval.run_dir"))
    check_same_data(retriever.catalogue, reranker.catalogue, retriever_dir, run_dir)
    device = _torch_device(accelerator)
    ks = reranker.hyper_parameters["ks"]
    table = compare_stages(retriever.model.to(device), reranker.model.to(device), reranker.catalogue, candidates, ks, split, device=device)
    table.insert(1, "model", [retriever.model_name, reranker.model_name, f"{retriever.model_name} -> {reranker.model_name}"])
    heading = (
        f"{split} split: retriever {retriever_dir} ({retriever.model_name}) hands its top {candidates} unseen items per user "
        f"to re-ranker {run_dir} ({reranker.model_name}); candidate recall@{candidates} {table[f'recall@{candidates}'][0]:.4f}"
    )
    return table, heading


def _torch_device(accelerator: str) -> torch.device:
    """Lightning's accelerator names as a torch device (check_evaluate_config accepted the name)."""
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cpu" if accelerator == "cpu" else "cuda")


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
    data = checked_component("data", data, str(config_path))
    try:
        check_rules(OmegaConf.create({"data": data}), {key: rule for key, rule in TRAINING_RULES.items() if key.startswith("data.")})
    except ConfigError as error:
        raise ConfigError(f"{config_path}: {error}") from error
    training_cwd = _training_cwd(run_dir)
    for key in DATA_PATH_KEYS:
        if isinstance(data.get(key), str) and training_cwd is not None:
            data[key] = str(training_cwd / Path(data[key]).expanduser())
    if data.get("_target_") == MOVIELENS_TARGET:
        data["download"] = False
    return data


def _training_cwd(run_dir: Path) -> Path | None:
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.exists():  # an older or edited run folder: relative paths then resolve from here
        return None
    cwd = OmegaConf.select(read_run_yaml(path), "hydra.runtime.cwd", default=None, throw_on_resolution_failure=False)
    return Path(cwd) if isinstance(cwd, str) else None


def compare_with_recorded(evaluated: dict[str, float], run_dir: str | Path, tolerance: float) -> pd.DataFrame:
    """One row per metric: evaluated, recorded in metrics.json (NaN if absent), and whether they agree."""
    recorded = read_run_metrics(run_dir, remedy=METRICS_REMEDY)
    rows = []
    for name, value in evaluated.items():
        before = recorded.get(name)
        before = float(before) if isinstance(before, (int, float)) and not isinstance(before, bool) else math.nan
        rows.append({"metric": name, "evaluated": value, "metrics.json": before, "equal": abs(value - before) <= tolerance})
    return pd.DataFrame(rows)


def report(table: pd.DataFrame, out: TextIO = sys.stdout) -> None:
    print(table.to_string(index=False, float_format=lambda value: f"{value:.6f}"), file=out)
    print(f"all {len(table)} metrics equal metrics.json" if table["equal"].all() else differing_summary(table), file=out)


def differing_summary(table: pd.DataFrame) -> str:
    differing = table[~table["equal"]]
    return f"{len(differing)} of {len(table)} metrics differ from metrics.json: {', '.join(differing['metric'])}"[:300]


def is_recorded_checkpoint(run_dir: str | Path, checkpoint: str) -> bool:
    """Whether `checkpoint` is the file metrics.json's figures were computed from: only then must they agree."""
    named = read_run_metrics(run_dir, remedy=METRICS_REMEDY).get(BEST_CHECKPOINT_KEY)
    return bool(named) and find_checkpoint(run_dir, checkpoint).resolve() == (Path(run_dir) / named).resolve()


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """The comparison table; exit 1 when the checkpoint metrics.json names no longer gives its figures."""
    try:
        check_evaluate_config(cfg)
        apply_thread_count(OmegaConf.select(cfg, "runtime.threads", default="auto"))
        if cfg.retrieval.run_dir is not None:
            table, heading = evaluate_two_stage(
                cfg.run_dir, cfg.retrieval.run_dir, cfg.retrieval.candidates, cfg.checkpoint, cfg.split, cfg.accelerator
            )
            print(heading + "\n" + table.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
            return
        evaluated = evaluate(cfg.run_dir, cfg.checkpoint, cfg.split, cfg.accelerator)
        table = compare_with_recorded(evaluated, cfg.run_dir, cfg.tolerance)
        report(table)
        recorded = table[table["metrics.json"].notna()]  # a metric the run did not record cannot contradict it
        if not recorded["equal"].all() and is_recorded_checkpoint(cfg.run_dir, cfg.checkpoint):
            raise MetricsDiffer(differing_summary(recorded))
    except RecsysError as error:
        exit_with_message(error)


if __name__ == "__main__":
    try:
        check_override_keys(sys.argv[1:], "evaluate")
    except ConfigError as error:
        exit_with_message(error)
    main()
