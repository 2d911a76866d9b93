"""trainer=sharded: the model's dense parameters (MLP towers, NeuMF's output weights) built for real, the same on
every rank, while its row tables stay on the meta device until TorchRec holds them (strategy.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from recsys_lightning.models.base import Recommender, build_recommender
from recsys_lightning.seeds import stream_seed


def build_dense_parts(model: Recommender, config: Mapping[str, Any], seed: int) -> None:
    """Replace every meta parameter and buffer of `model` that is not a row table by the one a copy of the model
    with one user and one item is built with, from `seed` alone: the dense parts' shapes never depend on the
    catalogue, and the copy costs no table. Every rank, at any W, starts from the same dense weights (DDP then
    keeps them equal), and the global RNG is left as it was. Called once trainer=sharded has accepted the model
    (`strategy.check_sharded_run`): a model it refuses may have catalogue-sized parts besides its tables. The side
    features' matrices are catalogue-sized but data, set for real before this (`FeatureEmbedding.set_features`)."""
    row_tables = {id(table) for table in model.shardable_tables()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, "dense"))
        with torch.device("cpu"):
            small = build_recommender(config, 1, 1)
    built = dict(small.named_parameters()) | dict(small.named_buffers())
    for name, value in [*model.named_parameters(), *model.named_buffers()]:
        if id(value) in row_tables or not value.is_meta:
            continue
        source = built.get(name)
        if source is None or source.shape != value.shape:
            shape = tuple(value.shape)
            raise ValueError(f"{type(model).__name__}.{name} {shape} depends on the catalogue's size; it cannot be built apart")
        owner, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner), leaf, _like(value, source))


def _like(meta: Tensor, value: Tensor) -> Tensor:
    if isinstance(meta, nn.Parameter):
        return nn.Parameter(value.detach().clone(), requires_grad=meta.requires_grad)
    return value.detach().clone()
