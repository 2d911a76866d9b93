"""A data source read a chunk of rows at a time, for `prepare`, whose memory must not grow with the rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ChunkedInteractions:
    """What a source hands `prepare` in place of `LoadedInteractions`.

    - `chunks()`: the raw rows, from the first again at every call, as frames of user_id, item_id, rating,
      timestamp (the row's number in the source where it has none) and, where the source has one, target.
    - `index_ids(distinct)`: one column's distinct raw ids as the chunks give them -> the ids `setup`
      indexes, position for position (a CSV's text becomes integers when every id is exact).
    - `items(item_ids)`: the item metadata (item_id, title), given every raw item id `index_ids` gave.
    - `given_parts`: whether the source comes split (pre-split files): then every chunk has a `part` column
      (0 train, 1 valid, 2 test) and the rows are used as given (`split_by_parts`), not split.
    """

    chunks: Callable[[], Iterator[pd.DataFrame]]
    source: str
    ratings_missing: str | None
    index_ids: Callable[[np.ndarray], np.ndarray]
    items: Callable[[np.ndarray], pd.DataFrame]
    given_parts: bool = False


def frame_chunks(frame: pd.DataFrame, chunk_rows: int) -> Callable[[], Iterator[pd.DataFrame]]:
    """`chunks` of a frame already in memory (a small source, or one whose generator holds every row anyway)."""

    def chunks() -> Iterator[pd.DataFrame]:
        for start in range(0, len(frame), chunk_rows):
            yield frame.iloc[start : start + chunk_rows]

    return chunks


class IdTally:
    """The distinct values of an id column and each one's rows, a chunk at a time. Each chunk's distinct values
    wait in a list, merged by one hashing pass once they outnumber those known: a merge per chunk would
    rehash every known id each time (most of a read, with many small chunks)."""

    def __init__(self) -> None:
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.waiting = 0
        self.known: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, column: pd.Series) -> None:
        if isinstance(column.dtype, pd.CategoricalDtype):  # counted by code, once per category
            counts = np.bincount(column.cat.codes.to_numpy(), minlength=len(column.cat.categories))
            values, counts = np.asarray(column.cat.categories, dtype=object)[counts > 0], counts[counts > 0]
        else:
            values, counts = np.unique(column.to_numpy(), return_counts=True)
        self.pending.append((values, counts))
        self.waiting += len(values)
        if self.known is None or self.waiting > len(self.known[0]):
            self._merge()

    def _merge(self) -> None:
        parts = self.pending if self.known is None else [self.known, *self.pending]
        codes, distinct = pd.factorize(np.concatenate([values for values, _ in parts]))
        rows = np.bincount(codes, weights=np.concatenate([counts for _, counts in parts]), minlength=len(distinct))
        self.known, self.pending, self.waiting = (np.asarray(distinct), rows.astype(np.int64)), [], 0

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(distinct values, rows of each)."""
        if self.pending:
            self._merge()
        return self.known


def id_places(keys: pd.Index, column: pd.Series) -> np.ndarray:
    """Each row's id as its place in `keys` (every id of the column is there)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return keys.get_indexer(column.cat.categories)[column.cat.codes.to_numpy()]
    return keys.get_indexer(column.to_numpy())
