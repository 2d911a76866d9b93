"""The training positives as a lookup structure: who has which item, and uniform draws of what they have not."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from recsys_lightning.data.sparse import UserItemCSR


@dataclass(frozen=True)
class TrainingPositives:
    """Each user's training items with the sorted keys that make membership and exclusion vectorised.

    One copy serves every consumer on the training device: samplers exclude positives from their
    draws, the full softmax hides a user's other positives. `keys` are user * num_items + item, sorted
    because CSR rows are sorted, so membership is one `searchsorted`.

    On a rank of prepared data (prepared/datamodule.py) the CSR holds only that rank's users, row u
    being global user `first_user + u`: the methods take global users and subtract once, and
    `item_counts` are the global training popularity, so popularity samplers see every rank's users.
    """

    csr: UserItemCSR
    keys: Tensor
    gap_keys: Tensor
    item_counts: Tensor
    first_user: int = 0

    @classmethod
    def from_csr(cls, csr: UserItemCSR, first_user: int = 0, item_counts: Tensor | None = None) -> TrainingPositives:
        """`item_counts` (default: counted from `csr`) is what popularity reads: the global counts on a share."""
        rows = torch.repeat_interleave(torch.arange(csr.num_users, device=csr.indptr.device), csr.counts())
        keys = rows * csr.num_items + csr.indices
        rank_in_row = torch.arange(len(rows), device=rows.device) - csr.indptr[rows]
        if item_counts is None:
            item_counts = torch.bincount(csr.indices, minlength=csr.num_items)
        return cls(csr, keys, keys - rank_in_row, item_counts, first_user)

    @property
    def num_users(self) -> int:
        return self.csr.num_users

    @property
    def num_items(self) -> int:
        return self.csr.num_items

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def to(self, device: torch.device | str) -> TrainingPositives:
        moved = (self.csr.to(device), self.keys.to(device), self.gap_keys.to(device), self.item_counts.to(device))
        return TrainingPositives(*moved, self.first_user)

    def local(self, users: Tensor) -> Tensor:
        """Rows of the CSR of global `users`: the users themselves in one process (no copy)."""
        return users - self.first_user if self.first_user else users

    def coordinates(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """(row, item) coordinates of the positives of `users`, row being the position in `users`."""
        return self.csr.coordinates(self.local(users))

    def contains(self, users: Tensor, items: Tensor) -> Tensor:
        """Whether each item of `items` [B] or [B, N] is a training positive of its row's user in `users` [B]."""
        keys = self.local(users).reshape(-1, *[1] * (items.dim() - users.dim())) * self.num_items + items
        position = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        return self.keys[position] == keys

    def held(self, users: Tensor, items: Tensor) -> Tensor:
        """[U, N]: whether each of `items` [N] is a training positive of each of `users` [U].

        Built from the users' rows, so it costs their number of positives, not a search per cell.
        """
        column = torch.full((self.num_items,), -1, device=items.device)
        column[items] = torch.arange(len(items), device=items.device)
        rows, held_items = self.coordinates(users)
        columns = column[held_items]
        found = columns >= 0
        mask = torch.zeros(len(users), len(items), dtype=torch.bool, device=items.device)
        mask[rows[found], columns[found]] = True
        return mask

    def uniform_unseen(self, users: Tensor, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        """Items drawn uniformly from each user's non-positives, exactly and without rejection.

        For a user with sorted positives p_0 < p_1 < ..., let q_j = p_j - j (non-positives before p_j).
        The r-th non-positive item is r + #{j : q_j <= r}: one `searchsorted` over the keys
        u * num_items + q_j, which are globally sorted. A uniform r in [0, num_items - n_u) thus maps
        to a uniform negative. `shape` is the shape of draws per user.
        """
        return self.unseen_at(users, torch.rand((len(users), *shape), generator=generator, device=users.device, dtype=torch.float64))

    def unseen_at(self, users: Tensor, uniform: Tensor) -> Tensor:
        """`uniform_unseen` for given uniforms in [0, 1) ([len(users), ...]): the same map, drawn elsewhere."""
        users = self.local(users)
        indptr = self.csr.indptr
        expand = (len(users),) + (1,) * (uniform.dim() - 1)
        num_candidates = (self.num_items - (indptr[users + 1] - indptr[users])).view(expand)
        rank = torch.minimum((uniform * num_candidates).long(), num_candidates - 1)
        keys = users.view(expand) * self.num_items + rank
        positives_before = torch.searchsorted(self.gap_keys, keys.reshape(len(users), -1), right=True).view_as(keys)
        return rank + positives_before - indptr[users].view(expand)
