"""What one rank trains and evaluates on: a contiguous block of users with every interaction of theirs.

The split is already applied (by `prepare`, with the single-process rules and seed), so a rank needs
nothing of other ranks' users: training positives, negative exclusion, evaluation and the summed
metrics stay local. Only item-sized facts (item count, ids, titles, training popularity) are global.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

TRAIN, VALID, TEST, NEGATIVE = 0, 1, 2, 3  # `parts` codes; NEGATIVE: an explicit negative (target 0) of train


@dataclass(frozen=True)
class UserShare:
    """Users `first_user` .. `first_user + num_users - 1` (global indices) and all their rows.

    Rows are in the order of the single-process pipeline (`row`), so at one rank the batches, and
    hence the metrics, are those of the same data loaded directly.

    - `users`, `items`: global indices (int64); `ratings` float32; `timestamps` float64
    - `parts`: int8, TRAIN / VALID / TEST, or NEGATIVE for an explicit negative of training
    - `user_ids`: raw ids of this block's users, in index order
    """

    first_user: int
    num_users: int
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    parts: np.ndarray
    user_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


def user_blocks(counts: np.ndarray, parts: int) -> np.ndarray:
    """Boundaries [parts + 1] cutting users 0..len(counts)-1 into `parts` contiguous blocks of about
    equal interaction counts (block k is users boundaries[k] .. boundaries[k+1] - 1); every block
    holds at least one user, so `parts` must not exceed the number of users."""
    if not 1 <= parts <= len(counts):
        raise ValueError(f"{parts} parts for {len(counts)} users: need 1 <= parts <= users")
    cumulative = np.cumsum(counts, dtype=np.int64)
    targets = cumulative[-1] * np.arange(1, parts) / parts
    inner = np.searchsorted(cumulative, targets, side="left") + 1
    # Block k ends at user k + d_k: d non-decreasing and within [0, users - parts] keeps every block non-empty.
    steps = np.arange(1, parts)
    gaps = np.maximum.accumulate(np.clip(inner - steps, 0, len(counts) - parts))
    inner = steps + gaps
    return np.concatenate([[0], inner, [len(counts)]]).astype(np.int64)


class ShareSource(Protocol):
    """Where a rank gets its share and the few global facts; `PreparedFolder` is the one on disk.

    Everything but `read_share` comes from the manifest and the items file, so a rank learns every
    rank's step count and the global popularity without reading other ranks' rows or communicating.
    """

    num_users: int
    num_items: int
    item_ids: np.ndarray  # raw item ids in index order
    titles: list[str] | None  # one per item, or None
    item_train_counts: np.ndarray  # int64 [num_items]: training positives per item over all users
    valid_users: int  # users with at least one validation item, over all ranks
    source: str  # what was prepared, for messages and the run log
    ratings_missing: str | None  # why the source has no ratings (a rating loss is refused), None where it has them

    def train_rows_per_rank(self, world: int) -> list[int]:
        """Training positives each of `world` ranks holds (rank r reads `parts_of(r, world)`)."""

    def read_share(self, rank: int, world: int) -> UserShare:
        """Rank `rank` of `world`'s users and rows, checked; rows sorted by the single-process order."""

    def reference(self) -> dict[str, str]:
        """{"path": absolute folder, "manifest_sha256": ...}: names this data in a checkpoint trained on several ranks."""
