"""A model rebuilt from a recorded config and weights, both read from an untrusted file.

The config sizes the model (a recorded `num_item_features=5_000_000` or `hidden=[65536] * 8` asks for
gigabytes), so it is first built on the `meta` device, which allocates nothing, and its expected weight
names and shapes are compared with the weights offered; only a config whose every tensor matches a
weight already in memory is built for real. Resume and `pretrained_from` compare a model built from the
run's own config with a checkpoint's weights through the same `weight_mismatch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from recsys_lightning.models.base import Recommender, build_recommender


class WeightsMismatch(ValueError):
    """The weights offered are not the ones the model config builds; the message names the first difference."""


def weight_mismatch(expected: Mapping[str, Tensor], offered: Mapping[str, Tensor], prefix: str = "", partial: bool = False) -> str | None:
    """The first difference between the weights a model has (`expected`) and those `offered`, by name, shape
    and layout (dense or sparse), as a phrase naming the weight; None when they fit. With `partial`, a weight
    the model has may be missing from `offered` (a warm start takes only some)."""
    for name, tensor in expected.items():
        if name not in offered:
            if partial:
                continue
            return f"{prefix}{name} is missing, this model needs {_described(tensor)}"
        if offered[name].shape != tensor.shape or offered[name].layout != tensor.layout:
            return f"{prefix}{name} is {_described(offered[name])}, this model needs {_described(tensor)}"
    unknown = [name for name in offered if name not in expected]
    if unknown and not partial:
        return f"{prefix}{unknown[0]} is not a weight of this model"
    return None


def _described(tensor: Tensor) -> str:
    sparse = "" if tensor.layout == torch.strided else " (sparse)"
    return f"{list(tensor.shape)}{sparse}"


def expected_weights(config: Mapping[str, Any], num_users: int, num_items: int) -> dict[str, Tensor]:
    """The state dict `config` would build, as `meta` tensors: names and shapes, no memory."""
    with torch.device("meta"):
        return build_recommender(config, num_users, num_items).state_dict()


def check_weights(config: Mapping[str, Any], num_users: int, num_items: int, weights: Mapping[str, Tensor]) -> None:
    """WeightsMismatch unless `weights` are exactly those of the model `config` builds (names, shapes,
    layouts), found without allocating the model: then building it costs no more than they do."""
    problem = weight_mismatch(expected_weights(config, num_users, num_items), weights, prefix="model.")
    if problem is not None:
        raise WeightsMismatch(problem)


def build_with_weights(config: Mapping[str, Any], num_users: int, num_items: int, weights: Mapping[str, Tensor]) -> Recommender:
    """The model `config` names, holding `weights`, built only once `check_weights` has passed."""
    check_weights(config, num_users, num_items, weights)
    model = build_recommender(config, num_users, num_items)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:  # a value a model's own load hook refuses (ItemKNN's neighbours out of range)
        raise WeightsMismatch(load_error_detail(error)) from error
    return model


def load_error_detail(error: RuntimeError) -> str:
    """What `load_state_dict` found wrong: its message's last line (the first only says "Error(s) in loading")."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(error).__name__
