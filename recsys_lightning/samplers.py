"""Negative samplers: for each positive (user, item), items the user is assumed not to like."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.models.base import Recommender


class NegativeSampler(nn.Module, ABC):
    """Draws `num_negatives` items per positive, for a whole batch in one call.

    The training positives are attached with `bind` once the module is on its device; they are
    non-persistent buffers, so they follow `.to(device)` but never enter a checkpoint.
    """

    def __init__(self, num_negatives: int = 1) -> None:
        super().__init__()
        if num_negatives < 1:
            raise ValueError(f"sampler.num_negatives must be >= 1, got {num_negatives}")
        self.num_negatives = num_negatives
        self.generator: torch.Generator | None = None

    def bind(self, train_positives: UserItemCSR) -> None:
        """Remember the training positives; they live on the device of the tensors given."""
        self.num_items = train_positives.num_items
        self.register_buffer("indptr", train_positives.indptr, persistent=False)
        self.register_buffer("positive_items", train_positives.indices, persistent=False)

    def reseed(self, seed: int) -> None:
        """Restart the sampler's own random stream: same seed, same negatives, on any run."""
        self.generator = torch.Generator(device=self.indptr.device).manual_seed(seed)

    @abstractmethod
    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> Tensor:
        """Negatives [B, num_negatives] for the batch's `users` [B] and their `positive_items` [B]."""


class UniformSampler(NegativeSampler):
    """Uniform over the items a user has not interacted with in train, exactly, without rejection.

    For a user with sorted positives p_0 < p_1 < ..., let q_j = p_j - j (non-positives before p_j).
    The r-th non-positive item is r + #{j : q_j <= r}, one `searchsorted` over keys u * num_items + q_j,
    which are globally sorted. So a uniform r in [0, num_items - n_u) maps to a uniform negative.
    """

    def bind(self, train_positives: UserItemCSR) -> None:
        super().bind(train_positives)
        rows = torch.repeat_interleave(
            torch.arange(train_positives.num_users, device=self.indptr.device), train_positives.counts()
        )
        rank_in_row = torch.arange(len(rows), device=rows.device) - self.indptr[rows]
        self.register_buffer("gap_keys", rows * self.num_items + self.positive_items - rank_in_row, persistent=False)

    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> Tensor:
        num_candidates = (self.num_items - (self.indptr[users + 1] - self.indptr[users])).unsqueeze(1)
        uniform = torch.rand(
            (len(users), self.num_negatives), generator=self.generator, device=users.device, dtype=torch.float64
        )
        rank = torch.minimum((uniform * num_candidates).long(), num_candidates - 1)
        keys = users.unsqueeze(1) * self.num_items + rank
        positives_before = torch.searchsorted(self.gap_keys, keys, right=True) - self.indptr[users].unsqueeze(1)
        return rank + positives_before
