"""Global ranks of records kept in several sorted files, found in bounded memory (an external merge).

`prepare` cuts the data into blocks of users, but the single-process split numbers every interaction by
its place among all of them, by (timestamp, source row). Each block's records, sorted by that key, are a
run; merging the runs a buffer at a time gives every record its global rank without holding them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

TIMESTAMP, SOURCE_ROW = "timestamp", "source_row"  # the key: source rows are distinct, so no two keys are equal
RANKS, DRAWS = ".rank", ".draw"  # suffixes of the files written beside each run


class _Run:
    """One sorted run file, read `buffer_rows` records at a time."""

    def __init__(self, path: Path, dtype: np.dtype, buffer_rows: int) -> None:
        self.path, self.dtype, self.buffer_rows = path, dtype, buffer_rows
        self.total = path.stat().st_size // dtype.itemsize
        self.read = 0
        self.buffer = np.zeros(0, dtype)

    def fill(self) -> None:
        """Tops the buffer up: with every buffer full, the smallest last key lets most of each be ranked at once
        (refilled only when empty, the buffers' ends drift apart and a round ranks about one buffer)."""
        count = min(self.buffer_rows - len(self.buffer), self.total - self.read)
        if count > 0:
            more = np.fromfile(self.path, self.dtype, count=count, offset=self.read * self.dtype.itemsize)
            self.buffer = np.concatenate([self.buffer, more])
            self.read += count

    @property
    def more(self) -> bool:
        """Whether records beyond the buffer remain, so the buffer's last key bounds what may be ranked now."""
        return self.read < self.total

    def count_up_to(self, timestamp: float, source_row: int) -> int:
        """Buffered records whose key is at most (timestamp, source_row)."""
        times = self.buffer[TIMESTAMP]
        low, high = np.searchsorted(times, timestamp, "left"), np.searchsorted(times, timestamp, "right")
        return int(low + np.searchsorted(self.buffer[SOURCE_ROW][low:high], source_row, "right"))

    def take(self, count: int) -> np.ndarray:
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken


def merge_ranks(runs: Sequence[Path], dtype: np.dtype, memory_rows: int, draws: np.random.Generator | None = None) -> int:
    """Rank every record of `runs` (files of `dtype` records, each sorted by (timestamp, source_row)) in
    their merged order, writing each run's ranks (int64, in the run's order) to the run's path + RANKS;
    with `draws`, the rank-th double of that generator too, to + DRAWS. Returns the number of records.

    At most `memory_rows` records are buffered. Doubles are drawn in consecutive calls, which give the
    numbers one call for all of them would (numpy draws one 64-bit word per double).
    """
    buffer_rows = max(1, memory_rows // max(1, len(runs)))
    readers = [_Run(Path(path), dtype, buffer_rows) for path in runs]
    for reader in readers:
        for suffix in (RANKS, DRAWS) if draws is not None else (RANKS,):
            Path(f"{reader.path}{suffix}").write_bytes(b"")
    ranked = 0
    while True:
        for reader in readers:
            reader.fill()
        loaded = [reader for reader in readers if len(reader.buffer)]
        if not loaded:
            return ranked
        # Every record at most the smallest last key of a run with more to come is smaller than all unread ones.
        waiting = [(reader.buffer[TIMESTAMP][-1], reader.buffer[SOURCE_ROW][-1]) for reader in loaded if reader.more]
        bound = min(waiting) if waiting else None
        pieces = [reader.take(len(reader.buffer) if bound is None else reader.count_up_to(*bound)) for reader in loaded]
        order = np.lexsort(
            (np.concatenate([piece[SOURCE_ROW] for piece in pieces]), np.concatenate([piece[TIMESTAMP] for piece in pieces]))
        )
        ranks = np.empty(len(order), np.int64)
        ranks[order] = ranked + np.arange(len(order))
        values = np.empty(len(order), np.float64)
        if draws is not None:
            values[order] = draws.random(len(order))
        start = 0
        for reader, piece in zip(loaded, pieces):
            if len(piece):
                with open(f"{reader.path}{RANKS}", "ab") as handle:
                    ranks[start : start + len(piece)].tofile(handle)
                if draws is not None:
                    with open(f"{reader.path}{DRAWS}", "ab") as handle:
                        values[start : start + len(piece)].tofile(handle)
            start += len(piece)
        ranked += len(order)
