"""Entry point: compose config -> build data, module, callbacks, loggers, trainer -> fit -> test -> metrics.json.

    python -m recsys_lightning.train model.dim=128 trainer.max_epochs=50 seed=7
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys_lightning.config import register_resolvers
from recsys_lightning.data.datamodule import InteractionDataModule
from recsys_lightning.errors import RecsysError
from recsys_lightning.module import RecommenderModule

log = logging.getLogger(__name__)
register_resolvers()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, early-stop, test the best checkpoint, and return the flat metrics written to metrics.json."""
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

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    best_checkpoint = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt_path = best_checkpoint or None
    metrics: dict[str, Any] = {}
    trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    metrics.update({name: value.item() for name, value in trainer.callback_metrics.items() if name.startswith("val/")})
    if cfg.run_test:
        metrics.update(trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)[0])
    metrics["best_epoch"] = _checkpoint_epoch(best_checkpoint) if best_checkpoint else trainer.current_epoch - 1
    metrics["data_source"] = datamodule.source

    for logger in trainer.loggers:
        final = {f"final/{name}": value for name, value in metrics.items() if isinstance(value, (int, float))}
        logger.log_hyperparams(_plain(cfg), metrics=final)
    _write_json_atomically(run_dir / "metrics.json", metrics)
    log.info("metrics: %s", json.dumps(metrics, indent=None))
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra wrapper: a user error becomes one line on stderr and exit code 1; returns the sweep objective."""
    try:
        metrics = train(cfg)
    except RecsysError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
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
