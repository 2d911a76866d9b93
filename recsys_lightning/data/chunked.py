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
