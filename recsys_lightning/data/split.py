"""Per-user train/valid/test splits, vectorised over all users at once."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from recsys_lightning.data.interactions import Interactions
from recsys_lightning.errors import ConfigError

log = logging.getLogger(__name__)

SPLIT_KINDS = ("ratio", "leave_one_out", "temporal")


@dataclass(frozen=True)
class Split:
    """Row indices into the interactions for each part, plus how many users could only train."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    train_only_users: int


def split_interactions(
    interactions: Interactions, kind: str, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> Split:
    """Split each user's interactions into train, valid and test.

    - `ratio`: a seeded random share of each user's interactions per part.
    - `temporal`: the same shares, but the latest interactions go to valid and test.
    - `leave_one_out`: the latest interaction is test, the one before it valid.

    A user too small to give every part at least one interaction keeps all of them in train.
    """
    if kind not in SPLIT_KINDS:
        raise ConfigError(f"data.split={kind!r} is not a split kind: use one of {', '.join(SPLIT_KINDS)}")
    users = interactions.users
    tiebreak = np.random.default_rng(seed).random(len(users))
    if kind == "ratio":
        order = np.lexsort((tiebreak, users))
    else:
        order = np.lexsort((tiebreak, interactions.timestamps, users))

    counts = np.bincount(users, minlength=interactions.num_users)
    if kind == "leave_one_out":
        train_end, valid_end = counts - 2, counts - 1
    else:
        train_share, valid_share, test_share = _check_ratios(ratios)
        train_end = np.floor(counts * train_share + 0.5).astype(np.int64)
        valid_end = np.floor(counts * (train_share + valid_share) + 0.5).astype(np.int64)
    splittable = (train_end >= 1) & (valid_end > train_end) & (counts > valid_end)
    train_end = np.where(splittable, train_end, counts)
    valid_end = np.where(splittable, valid_end, counts)

    sorted_users = users[order]
    group_start = np.cumsum(counts) - counts
    position = np.arange(len(users)) - group_start[sorted_users]
    part = (position >= train_end[sorted_users]).astype(np.int8) + (position >= valid_end[sorted_users])

    train_only = int(((~splittable) & (counts > 0)).sum())
    if train_only:
        log.warning("%d users have too few interactions for a %s split and are kept in train only", train_only, kind)
    return Split(
        train=np.sort(order[part == 0]),
        valid=np.sort(order[part == 1]),
        test=np.sort(order[part == 2]),
        train_only_users=train_only,
    )


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or min(ratios) <= 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise ConfigError(
            f"data.split_ratios={list(ratios)} must be three positive shares (train, valid, test) summing to 1, "
            "for example [0.8,0.1,0.1]"
        )
    train_share, valid_share, test_share = (float(r) for r in ratios)
    return train_share, valid_share, test_share


def split_by_parts(interactions: Interactions) -> Split:
    """Use a given train/valid/test assignment as it is, leaving out valid and test rows whose user or
    item never occurs in train: the model has nothing to rank them with."""
    parts = interactions.parts
    train = np.flatnonzero(parts == 0)
    seen_users = np.zeros(interactions.num_users, dtype=bool)
    seen_items = np.zeros(interactions.num_items, dtype=bool)
    seen_users[interactions.users[train]] = True
    seen_items[interactions.items[train]] = True
    known = seen_users[interactions.users] & seen_items[interactions.items]
    unseen = int(((parts > 0) & ~known).sum())
    if unseen:
        log.warning("%d valid/test rows have a user or item absent from train; they are left out of evaluation", unseen)
    return Split(
        train=train,
        valid=np.flatnonzero((parts == 1) & known),
        test=np.flatnonzero((parts == 2) & known),
        train_only_users=0,
    )
