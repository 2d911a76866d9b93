"""One way to build the LightningModule (and the DataModule) from a composed config, used by training,
evaluation, prepare, bench and tests."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys_lightning.data.training_data import TrainingData
from recsys_lightning.errors import ConfigError, RecsysError
from recsys_lightning.module import RecommenderModule
from recsys_lightning.pretrained import load_pretrained
from recsys_lightning.sharded import holds_tables
from recsys_lightning.sharded.dense import build_dense_parts
from recsys_lightning.sharded.strategy import check_sharded_run

# Model keys the data sets (never a user): the sizes of the side-feature vocabularies.
FEATURE_COUNT_KEYS = ("num_user_features", "num_item_features")


def build_datamodule(data: DictConfig | dict[str, Any], **kwargs: Any) -> Any:
    """The DataModule the `data` option names. A user error its constructor raises (`data=csv` without a
    path) comes out as itself, one line, not wrapped in Hydra's InstantiationException."""
    try:
        return instantiate(data, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, RecsysError):
            raise error.__cause__ from None
        raise


def build_module(cfg: DictConfig, data: TrainingData) -> RecommenderModule:
    """The module for the config the user composed (never a config read back from disk) and `data`.

    The model is sized by the data, and initialised from `pretrained_from` runs when given; model,
    loss, sampler, optimizer and scheduler are handed over as
    plain resolved containers, which the module records as its hyperparameters.
    """
    module = RecommenderModule(
        num_users=data.num_users,
        num_items=data.num_items,
        model=with_feature_counts(plain(cfg.model), data),
        loss=plain(cfg.loss),
        sampler=plain(cfg.sampler),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")),
        ks=list(cfg.eval.ks),
        seed=cfg.seed,
        data=data,
        tables_elsewhere=holds_tables(cfg),
    )
    if holds_tables(cfg):
        check_sharded_run(module, str(cfg.trainer.get("accelerator", "auto")))
        build_dense_parts(module.model, module.hparams.model, cfg.seed)  # the MLP towers, the same on every rank
    if cfg.get("pretrained_from"):
        load_pretrained(module.model, list(cfg.pretrained_from), data.catalogue)
    return module


def with_feature_counts(model: dict[str, Any], data: TrainingData) -> dict[str, Any]:
    """A model config asking for side features gets their vocabulary sizes from the data: they size its
    feature embeddings, and are recorded with it, so a checkpoint rebuilds the same shapes."""
    if not model.get("features"):
        return model
    if data.item_features is None and data.user_features is None:
        raise ConfigError(
            "model.features=true, but the data has no side features: set data.item_features (ML-100K: [genre,year]) "
            "or data.user_features (ML-100K: [age,gender,occupation]), or model.features=false"
        )
    tables = (data.user_features, data.item_features)
    return {**model, **{key: table.num_features if table else 0 for key, table in zip(FEATURE_COUNT_KEYS, tables)}}


def plain(node: Any) -> Any:
    """Resolved plain containers: safe to store in a checkpoint and to hand to TensorBoard."""
    return None if node is None else OmegaConf.to_container(node, resolve=True)
