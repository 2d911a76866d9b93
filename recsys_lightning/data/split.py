"""Train/valid/test splits, vectorised: per user (ratio, temporal, leave-one-out) or per item (cold items)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from recsys_lightning.data.interactions import Interactions
from recsys_lightning.errors import ConfigError, DataError, quote
from recsys_lightning.seeds import stream_seed

log = logging.getLogger(__name__)

SPLIT_KINDS = ("ratio", "leave_one_out", "temporal", "cold_items")
OVERLAP_ACTIONS = ("drop", "error")  # what pre-split held-out pairs that were seen before get


@dataclass(frozen=True)
class Split:
    """Row indices into the interactions for each part, plus how many users could only train, and for
    given parts, how many rows each held-out part left out and why."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    train_only_users: int
    left_out: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


def split_interactions(interactions: Interactions, kind: str, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> Split:
    """Split each user's interactions into train, valid and test.

    - `ratio`: a seeded random share of each user's interactions per part.
    - `temporal`: the same shares, but the latest interactions go to valid and test.
    - `leave_one_out`: the latest interaction is test, the one before it valid.
    - `cold_items`: a seeded random share of the items per part, each with all its interactions.

    In the per-user splits a user too small to give every part at least one interaction keeps all of
    them in train.
    """
    if kind not in SPLIT_KINDS:
        raise ConfigError(f"data.split={kind!r} is not a split kind: use one of {', '.join(SPLIT_KINDS)}")
    if kind == "cold_items":
        return _split_items(interactions, ratios, seed)
    tiebreak = np.random.default_rng(stream_seed(seed, "split")).random(len(interactions))
    part, train_only = split_users(interactions.users, interactions.timestamps, tiebreak, kind, ratios, interactions.num_users)
    if train_only:
        log.warning("%d users have too few interactions for a %s split and are kept in train only", train_only, kind)
    return Split(
        train=np.flatnonzero(part == 0),
        valid=np.flatnonzero(part == 1),
        test=np.flatnonzero(part == 2),
        train_only_users=train_only,
    )


def split_users(
    users: np.ndarray, timestamps: np.ndarray, tiebreak: np.ndarray, kind: str, ratios: Sequence[float], num_users: int
) -> tuple[np.ndarray, int]:
    """The part (0 train, 1 valid, 2 test) of each row of a per-user split, and how many users could only train.

    The rules of `split_interactions`, for any rows holding whole users (`users` in 0..num_users-1, e.g. one
    contiguous block of users counted from its first), in single-process order with the row's draw of the
    split stream as `tiebreak`: a block gives each of its rows the part the whole data would.
    """
    if kind == "ratio":
        order = np.lexsort((tiebreak, users))
    else:
        order = np.lexsort((tiebreak, timestamps, users))

    counts = np.bincount(users, minlength=num_users)
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
    part = np.empty(len(users), dtype=np.int8)
    part[order] = (position >= train_end[sorted_users]).astype(np.int8) + (position >= valid_end[sorted_users])
    return part, int(((~splittable) & (counts > 0)).sum())


def rerank_holdout(users: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Which training rows (`users`: each row's user) a re-ranker holds out as its targets: per user, a random
    `share` of the rows (round(share x count), at least one, never all), drawn from `seed` alone as the
    ratio split draws, so the same seed holds out the same rows. A bool mask over the rows.

    A retriever trained without them (`data.rerank_holdout`) scores them as it scores unseen items: the
    honest signal a re-ranker learns from (recsys_lightning/rerank/)."""
    held = np.zeros(len(users), dtype=bool)
    if share <= 0 or len(users) == 0:
        return held
    draw = np.random.default_rng(stream_seed(seed, "rerank_holdout")).random(len(users))
    order = np.lexsort((draw, users))
    counts = np.bincount(users)
    taken = np.minimum(np.maximum(1, np.floor(counts * share + 0.5)), counts - 1).astype(np.int64)
    sorted_users = users[order]
    position = np.arange(len(users)) - (np.cumsum(counts) - counts)[sorted_users]
    held[order] = position < taken[sorted_users]
    return held


def _split_items(interactions: Interactions, ratios: Sequence[float], seed: int) -> Split:
    """Held-out items never occur in train, so the split measures how a model ranks items it has only
    seen through their features. Users whose items are all held out keep no training row; they stay,
    and are evaluated like everyone else."""
    part = item_parts(interactions.num_items, ratios, seed)[interactions.items]
    trains = np.bincount(interactions.users[part == 0], minlength=interactions.num_users)
    holds_out = np.bincount(interactions.users[part > 0], minlength=interactions.num_users)
    untrained = int(np.count_nonzero((trains == 0) & (holds_out > 0)))
    if untrained:
        log.warning(
            "%d users interacted only with held-out items, so they have no training interaction; they are evaluated all the same", untrained
        )
    return Split(
        train=np.flatnonzero(part == 0),
        valid=np.flatnonzero(part == 1),
        test=np.flatnonzero(part == 2),
        train_only_users=int(np.count_nonzero((trains > 0) & (holds_out == 0))),
    )


def item_parts(num_items: int, ratios: Sequence[float], seed: int) -> np.ndarray:
    """Each item's part (0 train, 1 valid, 2 test) in the `cold_items` split: a seeded share of the items per part."""
    train_share, valid_share, _ = _check_ratios(ratios)
    train_end = int(np.floor(num_items * train_share + 0.5))
    valid_end = int(np.floor(num_items * (train_share + valid_share) + 0.5))
    if not 1 <= train_end < valid_end < num_items:
        raise DataError(
            f"data.split=cold_items with data.split_ratios={list(ratios)} gives {train_end} train, {valid_end - train_end} valid "
            f"and {num_items - valid_end} test items of {num_items}; each part needs at least one: change the ratios or use another split"
        )
    shuffled = np.random.default_rng(stream_seed(seed, "split")).permutation(num_items)
    item_part = np.zeros(num_items, dtype=np.int8)
    item_part[shuffled[train_end:valid_end]] = 1
    item_part[shuffled[valid_end:]] = 2
    return item_part


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or min(ratios) <= 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise ConfigError(
            f"data.split_ratios={list(ratios)} must be three positive shares (train, valid, test) summing to 1, for example [0.8,0.1,0.1]"
        )
    train_share, valid_share, test_share = (float(r) for r in ratios)
    return train_share, valid_share, test_share


def check_overlap_action(on_overlap: str) -> str:
    if on_overlap not in OVERLAP_ACTIONS:
        raise ConfigError(f"data.on_overlap={on_overlap!r}: use drop (leave such pairs out of evaluation, with a warning) or error")
    return on_overlap


def split_by_parts(interactions: Interactions, on_overlap: str = "drop") -> Split:
    """Use a given train/valid/test assignment as it is, leaving out held-out rows the model cannot be
    fairly ranked on (`given_part_codes`). With `on_overlap="error"` a held-out pair seen before is a
    DataError instead.
    """
    check_overlap_action(on_overlap)
    parts, users, items = interactions.parts, interactions.users, interactions.items
    train = parts == 0
    seen_users = np.zeros(interactions.num_users, dtype=bool)
    seen_items = np.zeros(interactions.num_items, dtype=bool)
    seen_users[users[train]] = True
    seen_items[items[train]] = True
    codes, left_out, overlap = given_part_codes(
        parts, users * np.int64(interactions.num_items) + items, seen_users[users] & seen_items[items]
    )
    example = None
    if overlap.any():
        rows = np.flatnonzero(overlap)
        row = int(rows[np.argmin(parts[rows])])  # a valid example first, as a file would be read
        example = (interactions.user_ids[users[row]], interactions.item_ids[items[row]])
    report_left_out(left_out, example, on_overlap)
    return Split(
        train=np.flatnonzero(codes == 0),
        valid=np.flatnonzero(codes == 1),
        test=np.flatnonzero(codes == 2),
        train_only_users=0,
        left_out=left_out,
    )


def given_part_codes(parts: np.ndarray, pairs: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, dict[str, dict[str, int]], np.ndarray]:
    """Each row's part as given (0 train, 1 valid, 2 test), or -1 for a held-out row left out: one with a user
    or item absent from train (`seen` false: nothing to rank them with), a (user, item) pair already in train,
    or a test pair already in valid (seen items are hidden from the ranking, so such a pair could never be a
    hit); the valid copy of a pair in both valid and test stays. Also how many of each part were left out and
    why, and which rows were left out for a pair seen before (the overlap).

    `pairs` number each (user, item) pair; any rows holding whole users give each row the code all rows would
    give it, given `seen` from the whole train part (prepare splits one block of users at a time).
    """
    train = parts == 0
    unseen = (parts > 0) & ~seen
    in_train = (parts > 0) & ~unseen & np.isin(pairs, pairs[train])
    valid = (parts == 1) & ~unseen & ~in_train
    in_valid = (parts == 2) & ~unseen & ~in_train & np.isin(pairs, pairs[valid])
    test = (parts == 2) & ~unseen & ~in_train & ~in_valid
    codes = np.full(len(parts), -1, dtype=np.int8)
    codes[train], codes[valid], codes[test] = 0, 1, 2
    left_out = {
        name: {"unseen": int((unseen & (parts == code)).sum()), "in train": int((in_train & (parts == code)).sum())}
        for code, name in ((1, "valid"), (2, "test"))
    }
    left_out["test"]["in valid"] = int(in_valid.sum())
    return codes, left_out, in_train | in_valid


def report_left_out(left_out: Mapping[str, Mapping[str, int]], example: tuple[object, object] | None, on_overlap: str) -> None:
    """The warnings for held-out rows left out (`given_part_codes`' counts); with on_overlap=error, a held-out
    pair seen before is one DataError naming `example`, the first such (user, item) raw ids."""
    overlap = left_out["valid"]["in train"] + left_out["test"]["in train"] + left_out["test"]["in valid"]
    if overlap:
        counts = (
            f"valid {left_out['valid']['in train']} and test {left_out['test']['in train']} (user, item) pairs also in train, "
            f"test {left_out['test']['in valid']} also in valid"
        )
        if on_overlap == "error":
            user, item = example
            raise DataError(
                f"{counts} (e.g. user {quote(user)}, item {quote(item)}); held-out pairs must be new: "
                "remove them from the valid/test files, or set data.on_overlap=drop to leave them out of evaluation"
            )
        log.warning(
            "%s: they are left out of evaluation (a seen item is never ranked, so they would count as misses); "
            "data.on_overlap=error makes this an error",
            counts,
        )
    unseen = left_out["valid"]["unseen"] + left_out["test"]["unseen"]
    if unseen:
        log.warning(
            "%d valid/test rows have a user or item absent from train; they are left out of evaluation (valid %d, test %d)",
            unseen,
            left_out["valid"]["unseen"],
            left_out["test"]["unseen"],
        )
