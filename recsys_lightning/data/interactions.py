"""Raw interaction rows -> implicit-feedback interactions with contiguous indices."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys_lightning.errors import DataError

log = logging.getLogger(__name__)

USER, ITEM, RATING, TIMESTAMP = "user_id", "item_id", "rating", "timestamp"
TARGET = "target"  # optional: 1 positive, 0 explicit negative
PART = "part"  # optional: 0 train, 1 valid, 2 test, for data that comes already split


@dataclass(frozen=True)
class Interactions:
    """Positive (user, item) events indexed 0..num_users-1 and 0..num_items-1.

    Models and metrics only ever see indices; `user_ids[u]` and `item_ids[i]` give back the raw ids
    for anything shown to a person or written to a file.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    parts: np.ndarray | None = None

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, min_rating: float | None = None) -> Interactions:
        """Keep rows rated at least `min_rating` (all rows when None) and map raw ids to indices in
        sorted raw-id order. Rows are one per (user, item) (per part): see `latest_per_pair`.
        """
        if min_rating is not None:
            frame = frame[frame[RATING] >= min_rating]
        if frame.empty:
            if min_rating is None:
                raise DataError("there are no positive interactions to learn from")
            raise DataError(f"no interaction has rating >= {min_rating}: lower data.min_rating or set it to null")
        users, user_ids = pd.factorize(frame[USER], sort=True)
        items, item_ids = pd.factorize(frame[ITEM], sort=True)
        return cls(
            users=users.astype(np.int64),
            items=items.astype(np.int64),
            ratings=frame[RATING].to_numpy(np.float32),
            timestamps=frame[TIMESTAMP].to_numpy(np.float64),
            user_ids=np.asarray(user_ids),
            item_ids=np.asarray(item_ids),
            parts=frame[PART].to_numpy(np.int8) if PART in frame else None,
        )


def latest_per_pair(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item), per part for pre-split data: the latest, by timestamp, then by file
    order among equal timestamps (a file without timestamps is numbered in file order).

    Runs before anything else reads the rows, so a later row replaces the earlier opinion whatever
    it says: a re-rating before `min_rating` applies, a target 0 after a target 1 (and the reverse).
    """
    pair = [USER, ITEM, PART] if PART in frame else [USER, ITEM]
    latest = frame.sort_values(TIMESTAMP, kind="stable").drop_duplicates(pair, keep="last")
    if len(latest) < len(frame):
        pairs = int(frame.duplicated(pair, keep=False).sum()) - (len(frame) - len(latest))
        log.warning(
            "dropped %d repeated (user, item) rows of %d pairs, keeping the latest of each (by timestamp, then file order)",
            len(frame) - len(latest),
            pairs,
        )
    return latest
