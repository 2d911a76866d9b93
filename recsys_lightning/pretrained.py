"""Initialise a model from trained runs (`pretrained_from`): a warm start, or NeuMF's GMF + MLP pre-training.

The runs' checkpoints are untrusted files: only their tensors are read, never their configs, and only
from a run trained on exactly this data and split. A run on another split has trained on some of this
run's validation or test interactions, and its embeddings would carry them into the metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.errors import ConfigError
from recsys_lightning.models.base import Recommender
from recsys_lightning.models.weights import weight_mismatch
from recsys_lightning.runs.checkpoint_file import (
    CATALOGUE_KEY,
    catalogue_from_checkpoint,
    find_checkpoint,
    first_non_finite,
    load_checkpoint,
)

log = logging.getLogger(__name__)
KEY = "pretrained_from"


def load_pretrained(model: Recommender, run_dirs: Sequence[str], catalogue: Catalogue) -> None:
    """Copy into `model` every weight of each run's best checkpoint that `model` has, by name and shape.

    A weight offered by two runs is refused (which one should win is not ours to guess), and so is a
    run that offers nothing this model has.
    """
    sources: list[dict[str, Tensor]] = []
    claimed: dict[str, str] = {}
    for run_dir in run_dirs:
        weights = _weights_of(Path(run_dir), model, catalogue)
        for name in weights:
            if name in claimed:
                raise ConfigError(f"{KEY}: model.{name} is in both {claimed[name]} and {run_dir}; list each part of the model once")
            claimed[name] = str(run_dir)
        sources.append(weights)
        log.info("Initialised %d weights from %s: %s", len(weights), run_dir, ", ".join(sorted(weights)))
    model.load_pretrained(sources)


def _weights_of(run_dir: Path, model: Recommender, catalogue: Catalogue) -> dict[str, Tensor]:
    try:
        path = find_checkpoint(run_dir, "best")
    except ConfigError as error:
        raise ConfigError(f"{KEY}: {error}") from None
    checkpoint = load_checkpoint(path)
    if CATALOGUE_KEY not in checkpoint:
        raise ConfigError(f"{KEY}: {path}: has no catalogue, so its data cannot be checked; retrain that run with this version")
    check_same_split(catalogue_from_checkpoint(checkpoint[CATALOGUE_KEY], path), catalogue, path)
    expected = model.state_dict()
    prefix = "model."
    offered = {name[len(prefix) :]: value for name, value in checkpoint["state_dict"].items() if name.startswith(prefix)}
    weights = {name: value for name, value in offered.items() if name in expected}
    if not weights:
        raise ConfigError(
            f"{KEY}: {path}: none of its weights ({', '.join(sorted(offered))[:120]}) belong to {type(model).__name__}; "
            "pretrain the same model (for NeuMF: model=ncf model.paths=[gmf] and model.paths=[mlp])"
        )
    problem = weight_mismatch(expected, weights, prefix="model.", partial=True)
    if problem is not None:
        raise ConfigError(f"{KEY}: {path}: {problem}; pretrain with the same sizes (model.dim, gmf_dim, mlp_dim, hidden)")
    broken = first_non_finite(weights)
    if broken is not None:
        raise ConfigError(f"{KEY}: {path}: model.{broken} holds NaN or infinite values; pretrain again")
    return weights


def check_same_split(theirs: Catalogue, ours: Catalogue, path: Path) -> None:
    """Same ids in the same order and the same training interactions (so the same validation and test too)."""
    same_ids = theirs.user_ids.equals(ours.user_ids) and theirs.item_ids.equals(ours.item_ids)
    if not same_ids:
        raise ConfigError(
            f"{KEY}: {path}: trained on other data ({theirs.num_users:,} users x {theirs.num_items:,} items, this run "
            f"{ours.num_users:,} x {ours.num_items:,}, or other ids); pretrain on the same data"
        )
    their_train, our_train = theirs.seen_in(["train"]), ours.seen_in(["train"])
    if not (torch.equal(their_train.indptr, our_train.indptr) and torch.equal(their_train.indices, our_train.indices)):
        raise ConfigError(
            f"{KEY}: {path}: trained on another split (another seed, data.split or filter), so it has seen this "
            "run's validation or test interactions; pretrain with the same data and seed"
        )
