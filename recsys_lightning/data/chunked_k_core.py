"""Iterative k-core filtering of a source read in chunks, for `prepare`, whose memory must not grow with the rows.

The rows `csv.k_core` keeps are those whose user and item both survive: a row's fate depends only on its
user and item, so keep-masks over the distinct users and items (the size of the id maps prepare holds
anyway) say it all. The source is read once for its ids, its rows are written as (user, item) places to a
scratch file, and passes over that file shrink the masks until the kept rows stop changing.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_lightning.data.chunked import IdTally, id_places
from recsys_lightning.data.interactions import ITEM, USER
from recsys_lightning.errors import DataError

log = logging.getLogger(__name__)


class ChunkedKCore:
    """Which rows of `chunks()` (frames of user_id and item_id, the same rows at every call) k-core filtering
    with `min_user` / `min_item` rows per user / item keeps; found at the first `filter`, `chunk_rows` rows
    at a time. `path` names the source in messages."""

    def __init__(self, chunks: Callable[[], Iterator[pd.DataFrame]], min_user: int, min_item: int, path: str, chunk_rows: int) -> None:
        self.chunks, self.min_user, self.min_item, self.path, self.chunk_rows = chunks, min_user, min_item, path, chunk_rows
        self.masks: tuple[pd.Index, np.ndarray, pd.Index, np.ndarray] | None = None

    def filter(self, chunks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        """`chunks` (a reading of the source) less the rows k-core filtering drops; chunks left empty are skipped."""
        if self.masks is None:
            self.masks = self._find_masks()
        user_keys, keep_user, item_keys, keep_item = self.masks
        for chunk in chunks:
            users, items = id_places(user_keys, chunk[USER]), id_places(item_keys, chunk[ITEM])
            self._check_known(users, items)
            kept = keep_user[users] & keep_item[items]
            if kept.any():
                yield chunk[kept]

    def _find_masks(self) -> tuple[pd.Index, np.ndarray, pd.Index, np.ndarray]:
        users, items = IdTally(), IdTally()
        for chunk in self.chunks():
            users.add(chunk[USER])
            items.add(chunk[ITEM])
        user_keys, item_keys = pd.Index(users.result()[0]), pd.Index(items.result()[0])
        with tempfile.TemporaryDirectory(prefix="k-core-") as scratch:
            pairs = Path(scratch) / "pairs"
            with open(pairs, "wb") as handle:
                for chunk in self.chunks():
                    places = np.stack([id_places(user_keys, chunk[USER]), id_places(item_keys, chunk[ITEM])], 1)
                    self._check_known(places[:, 0], places[:, 1])
                    places.astype(np.int64).tofile(handle)
            keep_user, keep_item = np.ones(len(user_keys), bool), np.ones(len(item_keys), bool)
            total = kept = None
            while True:  # csv.k_core's loop: counts over the kept rows, until a pass keeps as many rows as the last
                user_rows, item_rows = self._counts(pairs, keep_user, keep_item)
                now = int(user_rows.sum())
                total = now if total is None else total
                if now == kept:
                    break
                kept = now
                keep_user &= user_rows >= self.min_user
                keep_item &= item_rows >= self.min_item
        if not kept:
            raise DataError(
                f"{self.path}: k-core filtering (data.min_user_interactions={self.min_user}, data.min_item_interactions={self.min_item}) "
                "removed every interaction; lower those thresholds"
            )
        log.info("k-core kept %d of %d interactions", kept, total)
        return user_keys, keep_user, item_keys, keep_item

    def _counts(self, pairs: Path, keep_user: np.ndarray, keep_item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows per user and per item among the rows whose user and item are both kept."""
        user_rows, item_rows = np.zeros(len(keep_user), np.int64), np.zeros(len(keep_item), np.int64)
        rows = pairs.stat().st_size // 16
        for start in range(0, rows, self.chunk_rows):
            places = np.fromfile(pairs, np.int64, count=2 * min(self.chunk_rows, rows - start), offset=16 * start).reshape(-1, 2)
            kept = places[keep_user[places[:, 0]] & keep_item[places[:, 1]]]
            user_rows += np.bincount(kept[:, 0], minlength=len(keep_user))
            item_rows += np.bincount(kept[:, 1], minlength=len(keep_item))
        return user_rows, item_rows

    def _check_known(self, users: np.ndarray, items: np.ndarray) -> None:
        if (users < 0).any() or (items < 0).any():
            raise DataError(f"{self.path}: changed while prepare read it (an id its first reading lacked); run prepare again")
