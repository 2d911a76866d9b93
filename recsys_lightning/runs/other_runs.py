"""Another run this one builds on: a retriever whose candidates it trains on or re-ranks (`sampler.run_dir`,
`retrieval.run_dir`), or runs whose weights start its model (`pretrained_from`).

Each is the best checkpoint of its folder, an untrusted file, and must have been trained on exactly this
run's data and split: a run of another split has trained on some of this run's validation or test
interactions, and would carry them into its figures. A warm start reads only tensors, never a config.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.data.positives import TrainingPositives
from recsys_lightning.errors import ConfigError
from recsys_lightning.models.base import Recommender
from recsys_lightning.models.weights import weight_mismatch
from recsys_lightning.runs.checkpoint_file import find_checkpoint, first_non_finite, load_checkpoint, recorded_catalogue, with_held_tables
from recsys_lightning.runs.safe_config import checked_module_hyper_parameters
from recsys_lightning.runs.same_data import same_ids, same_training_pairs
from recsys_lightning.runs.trained_run import model_weights

PRETRAINED_KEY = "pretrained_from"


def best_checkpoint_of(run_dir: str | Path, key: str) -> Path:
    """The best checkpoint of the run `key` names; a missing one is one line naming `key`."""
    try:
        return find_checkpoint(run_dir, "best")
    except ConfigError as error:
        raise ConfigError(f"{key}: {error}") from None


def check_same_data(retriever: Catalogue, reranker: Catalogue, retriever_dir: str | Path, reranker_dir: str | Path) -> None:
    """One line naming both run folders unless they were trained on the same data and split."""
    if not (same_ids(retriever, reranker) and same_training_pairs(retriever, reranker.seen_in(["train"]))):
        raise ConfigError(
            f"retrieval.run_dir={retriever_dir} was trained on other data or another split than run_dir={reranker_dir} "
            "(other ids or training pairs), so its candidates may hold the re-ranker's test items; "
            "retrieve with a run trained on the same data, split and seed"
        )


def check_trained_on(catalogue: Catalogue, positives: TrainingPositives, retriever_dir: str | Path) -> None:
    """For `sampler=retrieved`: the retriever must have the training pairs this run trains on (the
    training data lends its positives only, so these and the catalogue sizes are what is compared)."""
    if not same_training_pairs(catalogue, positives.csr):
        raise ConfigError(
            f"sampler.run_dir={retriever_dir}: trained on other data or another split than this run "
            f"({catalogue.num_users:,} users x {catalogue.num_items:,} items, this run {positives.num_users:,} x "
            f"{positives.num_items:,}, or other training pairs); train the retriever with the same data, split and seed"
        )


def warm_start_weights(run_dir: str | Path, model: Recommender, catalogue: Catalogue) -> dict[str, Tensor]:
    """The weights of the best checkpoint of `run_dir` that `model` has, by name and shape, from a run
    trained on `catalogue`'s data and split; one line naming the run when it offers none, or other sizes."""
    path = best_checkpoint_of(run_dir, PRETRAINED_KEY)
    checkpoint = load_checkpoint(path)
    theirs = recorded_catalogue(checkpoint, path, "retrain that run with this version", where=f"{PRETRAINED_KEY}: {path}")
    _check_same_split(theirs, catalogue, path)
    # A trainer=sharded run keeps its tables beside the .ckpt, read whole here within its checked model's shapes.
    with_held_tables(checkpoint, path, checked_module_hyper_parameters(checkpoint.get("hyper_parameters"), str(path)))
    expected = model.state_dict()
    offered = model_weights(checkpoint["state_dict"], path)
    weights = {name: value for name, value in offered.items() if name in expected}
    if not weights:
        raise ConfigError(
            f"{PRETRAINED_KEY}: {path}: none of its weights ({', '.join(sorted(offered))[:120]}) belong to {type(model).__name__}; "
            "pretrain the same model (for NeuMF: model=ncf model.paths=[gmf] and model.paths=[mlp])"
        )
    problem = weight_mismatch(expected, weights, prefix="model.", partial=True)
    if problem is not None:
        raise ConfigError(f"{PRETRAINED_KEY}: {path}: {problem}; pretrain with the same sizes (model.dim, gmf_dim, mlp_dim, hidden)")
    broken = first_non_finite(weights)
    if broken is not None:
        raise ConfigError(f"{PRETRAINED_KEY}: {path}: model.{broken} holds NaN or infinite values; pretrain again")
    return weights


def _check_same_split(theirs: Catalogue, ours: Catalogue, path: Path) -> None:
    """Same ids in the same order and the same training interactions (so the same validation and test too)."""
    if not same_ids(theirs, ours):
        raise ConfigError(
            f"{PRETRAINED_KEY}: {path}: trained on other data ({theirs.num_users:,} users x {theirs.num_items:,} items, this run "
            f"{ours.num_users:,} x {ours.num_items:,}, or other ids); pretrain on the same data"
        )
    if not same_training_pairs(theirs, ours.seen_in(["train"])):
        raise ConfigError(
            f"{PRETRAINED_KEY}: {path}: trained on another split (another seed, data.split or filter), so it has seen this "
            "run's validation or test interactions; pretrain with the same data and seed"
        )
