"""Per-user item sets as CSR tensors: the one structure samplers and ranking masks share."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class UserItemCSR:
    """Row u holds user u's items, sorted: `indices[indptr[u]:indptr[u + 1]]`."""

    indptr: Tensor
    indices: Tensor
    num_items: int
    values: Tensor | None = None

    @classmethod
    def from_pairs(cls, users: Tensor, items: Tensor, num_users: int, num_items: int, values: Tensor | None = None) -> UserItemCSR:
        """Build from (user, item) pairs, with an optional value (a rating) each; pairs must be unique."""
        order = torch.argsort(users * num_items + items)
        counts = torch.bincount(users, minlength=num_users)
        indptr = torch.zeros(num_users + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(counts, 0)
        return cls(indptr, items[order].long(), num_items, None if values is None else values[order])

    @property
    def num_users(self) -> int:
        return len(self.indptr) - 1

    def counts(self, users: Tensor | None = None) -> Tensor:
        """Number of items of each user (of all users when `users` is None)."""
        if users is None:
            return self.indptr[1:] - self.indptr[:-1]
        return self.indptr[users + 1] - self.indptr[users]  # O(len(users)): called once per chunk

    def counts_per_item(self) -> Tensor:
        """Number of users holding each item."""
        return torch.bincount(self.indices, minlength=self.num_items)

    def coordinates(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """(row, item) coordinates of the items of `users`, where row is the position in `users`.

        Lets a caller mark a [len(users), num_items] block with one indexed assignment.
        """
        rows, positions = self._entries(users)
        return rows, self.indices[positions]

    def values_of(self, users: Tensor) -> Tensor:
        """The values of the entries `coordinates(users)` lists, in the same order."""
        return self.values[self._entries(users)[1]]

    def _entries(self, users: Tensor) -> tuple[Tensor, Tensor]:
        counts = self.counts(users)
        rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), counts)
        starts = torch.repeat_interleave(self.indptr[users] - torch.cumsum(counts, 0) + counts, counts)
        return rows, starts + torch.arange(len(rows), device=users.device)

    def union(self, other: UserItemCSR) -> UserItemCSR:
        """Row-wise union of two disjoint item sets (train and valid items to exclude at test)."""
        users = torch.arange(self.num_users)
        self_rows, self_items = self.coordinates(users)
        other_rows, other_items = other.coordinates(users)
        return UserItemCSR.from_pairs(
            torch.cat([self_rows, other_rows]), torch.cat([self_items, other_items]), self.num_users, self.num_items
        )

    def binary_matrix(self) -> Tensor:
        """The 0/1 [num_users, num_items] matrix of these item sets (X in the papers) as a coalesced sparse COO tensor."""
        rows, items = self.coordinates(torch.arange(self.num_users, device=self.indptr.device))
        ones = torch.ones(len(items), device=items.device)
        # Sorted rows of sorted, distinct items: coalesced by construction, nothing to check.
        shape = (self.num_users, self.num_items)
        return torch.sparse_coo_tensor(torch.stack([rows, items]), ones, shape, is_coalesced=True, check_invariants=False)

    def to(self, device: torch.device | str) -> UserItemCSR:
        values = None if self.values is None else self.values.to(device)
        return UserItemCSR(self.indptr.to(device), self.indices.to(device), self.num_items, values)
