"""One way to build the LightningModule from a composed config, used by training, evaluation, bench and tests."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from recsys_lightning.data.training_data import TrainingData
from recsys_lightning.module import RecommenderModule
from recsys_lightning.pretrained import load_pretrained


def build_module(cfg: DictConfig, data: TrainingData) -> RecommenderModule:
    """The module for the config the user composed (never a config read back from disk) and `data`.

    The model is sized by the data, and initialised from `pretrained_from` runs when given; model,
    loss, sampler, optimizer and scheduler are handed over as
    plain resolved containers, which the module records as its hyperparameters.
    """
    module = RecommenderModule(
        num_users=data.num_users,
        num_items=data.num_items,
        model=plain(cfg.model),
        loss=plain(cfg.loss),
        sampler=plain(cfg.sampler),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")),
        ks=list(cfg.eval.ks),
        seed=cfg.seed,
        data=data,
    )
    if cfg.get("pretrained_from"):
        load_pretrained(module.model, list(cfg.pretrained_from), data.catalogue)
    return module


def plain(node: Any) -> Any:
    """Resolved plain containers: safe to store in a checkpoint and to hand to TensorBoard."""
    return None if node is None else OmegaConf.to_container(node, resolve=True)
