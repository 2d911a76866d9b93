"""Entry point: compose config -> build data, module, callbacks, loggers, trainer -> fit -> test -> metrics.json.

    python -m recsys_lightning.train model.dim=128 trainer.max_epochs=50 seed=7
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from recsys_lightning.config import PROJECT_ROOT, register_resolvers
from recsys_lightning.data.datamodule import InteractionDataModule
from recsys_lightning.errors import ConfigError, RecsysError, exit_with_message
from recsys_lightning.module import RecommenderModule
from recsys_lightning.projector import log_item_embeddings

log = logging.getLogger(__name__)
register_resolvers()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, early-stop, test the best checkpoint, and return the flat metrics written to metrics.json."""
    check_loss_and_sampler(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.run_dir)

    datamodule: InteractionDataModule = instantiate(cfg.data)
    datamodule.setup("fit")  # the model's size depends on the data
    module = RecommenderModule(
        num_users=datamodule.num_users,
        num_items=datamodule.num_items,
        model=_plain(cfg.model),
        loss=_plain(cfg.loss),
        sampler=_plain(cfg.sampler),
        optimizer=_plain(cfg.optimizer),
        scheduler=_plain(cfg.get("scheduler")),
        ks=list(cfg.eval.ks),
        seed=cfg.seed,
    )
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values() if callback]
    loggers = [instantiate(logger) for logger in (cfg.get("logger") or {}).values() if logger]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    fit_start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    train_seconds = time.perf_counter() - fit_start
    best_checkpoint = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt_path = best_checkpoint or None
    metrics: dict[str, Any] = {}
    trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    metrics.update({name: value.item() for name, value in trainer.callback_metrics.items() if name.startswith("val/")})
    if cfg.run_test and datamodule.has_test:
        metrics.update(trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)[0])
    metrics["best_epoch"] = _checkpoint_epoch(best_checkpoint) if best_checkpoint else trainer.current_epoch - 1
    metrics["train_seconds"] = round(train_seconds, 2)
    metrics["epochs"] = trainer.current_epoch
    metrics["data_source"] = datamodule.source
    metrics["best_checkpoint"] = os.path.relpath(best_checkpoint, run_dir) if best_checkpoint else None

    for logger in trainer.loggers:
        final = {f"final/{name}": value for name, value in metrics.items() if isinstance(value, (int, float))}
        logger.log_hyperparams(_plain(cfg), metrics=final)
        if isinstance(logger, TensorBoardLogger) and cfg.projector.max_items > 0 and trainer.is_global_zero:
            # The module holds the best checkpoint's weights here: validate and test loaded them.
            log_item_embeddings(logger.experiment, module.model, module.catalogue, cfg.projector.max_items, trainer.global_step)
    if trainer.is_global_zero:
        _write_json_atomically(run_dir / "metrics.json", metrics)
        log.info("metrics: %s", json.dumps(metrics, indent=None))
    return metrics


def check_loss_and_sampler(cfg: DictConfig) -> None:
    """Fail at once, before any data is loaded, on a loss that cannot train with the chosen sampler."""
    loss_class = get_class(cfg.loss._target_)
    sampler_class = cfg.sampler._target_.rsplit(".", 1)[-1]
    if sampler_class not in loss_class.rejected_samplers:
        return
    options = {path.stem: OmegaConf.load(path).get("_target_", "") for path in sorted((PROJECT_ROOT / "conf" / "sampler").glob("*.yaml"))}
    valid = [name for name, target in options.items() if target.rsplit(".", 1)[-1] not in loss_class.rejected_samplers]
    raise ConfigError(
        f"{loss_class.__name__} cannot train with {sampler_class}: {loss_class.rejection_reason}; "
        f"with this loss use sampler={' or sampler='.join(valid)}"
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra wrapper: a user error becomes one line on stderr and exit code 1; returns the sweep objective.

    In a multirun, a failing run leaves error.txt in its folder and returns NaN, so the sweep goes on
    and its summary lists the failure.
    """
    try:
        metrics = train(cfg)
    except Exception as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            user_error = isinstance(error, RecsysError)
            message = str(error) if user_error else f"{type(error).__name__}: {error}"
            log.error("run failed: %s", message, exc_info=not user_error)
            (Path(cfg.paths.run_dir) / "error.txt").write_text(message + "\n")
            return float("nan")
        if not isinstance(error, RecsysError):
            raise
        exit_with_message(error)
    objective = cfg.get("optimized_metric")
    return metrics.get(objective) if objective else None


def _plain(node: Any) -> Any:
    """Resolved plain containers: safe to store in a checkpoint and to hand to TensorBoard."""
    return None if node is None else OmegaConf.to_container(node, resolve=True)


def _checkpoint_epoch(path: str) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written metrics.json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
    os.replace(handle.name, path)


if __name__ == "__main__":
    main()
