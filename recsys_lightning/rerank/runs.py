"""The two retriever runs a re-ranker is trained from, loaded as untrusted files and checked against this
run's data: the retriever R (`retrieval.run_dir`) whose candidates are re-ranked at validation, test and
serving, and the fold retriever F (`rerank.fold_run_dir`), R's preset trained with `data.rerank_holdout`,
whose candidates the re-ranker learns from with the held-out rows as targets."""

from __future__ import annotations

from pathlib import Path

import torch

from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.errors import ConfigError
from recsys_lightning.runs.other_runs import best_checkpoint_of
from recsys_lightning.runs.same_data import same_ids, same_training_pairs
from recsys_lightning.runs.trained_run import TrainedRun, load_trained

RETRIEVER_KEY = "retrieval.run_dir"
FOLD_KEY = "rerank.fold_run_dir"


def load_retriever(run_dir: str, catalogue: Catalogue, train: UserItemCSR) -> TrainedRun:
    """R: trained on exactly this run's data and training rows (same data, split and seed)."""
    run = load_trained(best_checkpoint_of(run_dir, RETRIEVER_KEY))
    if not (same_ids(run.catalogue, catalogue) and same_training_pairs(run.catalogue, train)):
        raise ConfigError(
            f"{RETRIEVER_KEY}={run_dir} was trained on other data, another split or another seed than this run "
            "(other ids or training pairs), so its candidates may hold test items; train it with this run's data and seed"
        )
    return run


def load_fold_retriever(
    run_dir: str, retriever_dir: str, catalogue: Catalogue, train: UserItemCSR, fold_train: UserItemCSR, holdout: float
) -> TrainedRun:
    """F: trained on this run's training rows less the rows `rerank.holdout` holds out (`fold_train`)."""
    if Path(run_dir).resolve() == Path(retriever_dir).resolve():
        raise ConfigError(
            f"{FOLD_KEY} is {RETRIEVER_KEY} ({run_dir}): the fold retriever must be the retriever's preset trained with "
            f"data.rerank_holdout={holdout:g}, a run of its own"
        )
    run = load_trained(best_checkpoint_of(run_dir, FOLD_KEY))
    trained = run.catalogue.seen_in(["train"]) if same_ids(run.catalogue, catalogue) else None
    if trained is None or not _subset(trained, train):
        raise ConfigError(
            f"{FOLD_KEY}={run_dir} was trained on other data, another split or another seed than this run; "
            f"train it with this run's data and seed and data.rerank_holdout={holdout:g}"
        )
    if not same_training_pairs(run.catalogue, fold_train):
        kept = len(trained.indices) / max(len(train.indices), 1)
        raise ConfigError(
            f"{FOLD_KEY}={run_dir} kept {kept:.1%} of this run's training rows, not the ones rerank.holdout={holdout:g} "
            f"leaves ({len(fold_train.indices) / max(len(train.indices), 1):.1%}): train it with data.rerank_holdout={holdout:g}, "
            "or set rerank.holdout to the share it held out"
        )
    return run


def _subset(part: UserItemCSR, whole: UserItemCSR) -> bool:
    """Whether every (user, item) pair of `part` is in `whole` (same shape)."""
    if (part.num_users, part.num_items) != (whole.num_users, whole.num_items):
        return False
    return bool(torch.isin(_pair_keys(part), _pair_keys(whole)).all())


def _pair_keys(csr: UserItemCSR) -> torch.Tensor:
    """user x num_items + item of every pair."""
    users, items = csr.coordinates(torch.arange(csr.num_users))
    return users * csr.num_items + items
