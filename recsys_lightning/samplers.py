"""Negative samplers: for each positive (user, item), items the user is assumed not to like.

Every sampler draws a whole batch's negatives in one vectorised call; none loops over examples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from recsys_lightning.data.sparse import UserItemCSR

if TYPE_CHECKING:
    from recsys_lightning.models.base import Recommender


class NegativeSampler(nn.Module, ABC):
    """Draws `num_negatives` items per positive, excluding the user's training positives.

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
        rows = torch.repeat_interleave(
            torch.arange(train_positives.num_users, device=train_positives.indptr.device), train_positives.counts()
        )
        self.register_buffer("indptr", train_positives.indptr, persistent=False)
        self.register_buffer("positive_items", train_positives.indices, persistent=False)
        # user * num_items + item, sorted because CSR rows are sorted: membership is one searchsorted.
        self.register_buffer("positive_keys", rows * self.num_items + train_positives.indices, persistent=False)
        rank_in_row = torch.arange(len(rows), device=rows.device) - self.indptr[rows]
        self.register_buffer("gap_keys", self.positive_keys - rank_in_row, persistent=False)
        self.register_buffer(
            "item_counts", torch.bincount(train_positives.indices, minlength=self.num_items), persistent=False
        )

    def reseed(self, seed: int) -> None:
        """Restart the sampler's own random stream: same seed, same negatives, on any run."""
        self.generator = torch.Generator(device=self.indptr.device).manual_seed(seed)

    @abstractmethod
    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> Tensor:
        """Negatives [B, num_negatives] for the batch's `users` [B] and their `positive_items` [B]."""

    def log_probability(self, items: Tensor) -> Tensor | None:
        """Log probability that a draw is `items`, for log-Q correction; None where it is uniform."""
        return None

    def valid_negatives(self, users: Tensor, negatives: Tensor) -> Tensor | None:
        """False where a negative is one of the user's training positives; None if that cannot happen."""
        return None

    def training_positives_of(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """(row, item) coordinates of the training positives of `users`, row being the position in `users`."""
        return UserItemCSR(self.indptr, self.positive_items, self.num_items).coordinates(users)

    def is_training_positive(self, users: Tensor, items: Tensor) -> Tensor:
        keys = users.reshape(-1, *[1] * (items.dim() - users.dim())) * self.num_items + items
        position = torch.searchsorted(self.positive_keys, keys).clamp(max=len(self.positive_keys) - 1)
        return self.positive_keys[position] == keys

    def uniform_unseen(self, users: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Items drawn uniformly from each user's non-positives, exactly and without rejection.

        For a user with sorted positives p_0 < p_1 < ..., let q_j = p_j - j (non-positives before p_j).
        The r-th non-positive item is r + #{j : q_j <= r}: one `searchsorted` over the keys
        u * num_items + q_j, which are globally sorted. A uniform r in [0, num_items - n_u) thus maps
        to a uniform negative. `shape` is the shape of draws per user.
        """
        expand = (len(users),) + (1,) * len(shape)
        num_candidates = (self.num_items - (self.indptr[users + 1] - self.indptr[users])).view(expand)
        uniform = torch.rand((len(users), *shape), generator=self.generator, device=users.device, dtype=torch.float64)
        rank = torch.minimum((uniform * num_candidates).long(), num_candidates - 1)
        keys = users.view(expand) * self.num_items + rank
        positives_before = torch.searchsorted(self.gap_keys, keys.reshape(len(users), -1), right=True).view_as(keys)
        return rank + positives_before - self.indptr[users].view(expand)


class UniformSampler(NegativeSampler):
    """Uniform over the items a user has not interacted with in train."""

    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> Tensor:
        return self.uniform_unseen(users, (self.num_negatives,))


class PopularitySampler(NegativeSampler):
    """P(item) proportional to count^alpha (word2vec's 0.75 by default), never a training positive.

    Draws that hit a positive are redrawn, all of them at once, for at most `max_rounds` rounds;
    any left after that (users who own most of the popular mass) fall back to uniform negatives.
    """

    def __init__(self, num_negatives: int = 1, alpha: float = 0.75, max_rounds: int = 20) -> None:
        super().__init__(num_negatives)
        self.alpha = alpha
        self.max_rounds = max_rounds

    def bind(self, train_positives: UserItemCSR) -> None:
        super().bind(train_positives)
        weights = self.item_counts.double().pow(self.alpha)
        self.register_buffer("probabilities", weights / weights.sum(), persistent=False)

    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> Tensor:
        draw = lambda count: torch.multinomial(self.probabilities, count, replacement=True, generator=self.generator)  # noqa: E731
        negatives = draw(len(users) * self.num_negatives).view(len(users), self.num_negatives)
        for _ in range(self.max_rounds):
            rejected = self.is_training_positive(users, negatives)
            if not rejected.any():
                return negatives
            negatives[rejected] = draw(int(rejected.sum()))
        rejected = self.is_training_positive(users, negatives)
        fallback = self.uniform_unseen(users, (self.num_negatives,))
        return torch.where(rejected, fallback, negatives)

    def log_probability(self, items: Tensor) -> Tensor:
        return self.probabilities.log()[items].float()


class InBatchSampler(NegativeSampler):
    """The batch's other positives serve as negatives: `num_negatives` of them per example.

    Items then appear in proportion to their training frequency, which `log_probability` reports
    for log-Q correction; a drawn item that the user has in train is flagged by `valid_negatives`
    so the loss masks it (an accidental hit), rather than redrawn.
    """

    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> Tensor:
        batch_size = len(users)
        offsets = torch.randint(1, max(batch_size, 2), (batch_size, self.num_negatives), generator=self.generator,
                                device=users.device)  # fmt: skip
        others = (torch.arange(batch_size, device=users.device).unsqueeze(1) + offsets) % batch_size
        return positive_items[others]

    def log_probability(self, items: Tensor) -> Tensor:
        frequency = self.item_counts.double() / self.item_counts.sum()
        return frequency.clamp(min=1e-12).log()[items].float()

    def valid_negatives(self, users: Tensor, negatives: Tensor) -> Tensor:
        return ~self.is_training_positive(users, negatives)


class HardNegativeSampler(NegativeSampler):
    """Dynamic negative sampling (Zhang et al. 2013): of `candidates` uniform unseen items, keep the one
    the current model scores highest, for each negative."""

    def __init__(self, num_negatives: int = 1, candidates: int = 8) -> None:
        super().__init__(num_negatives)
        self.candidates = candidates

    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> Tensor:
        pool = self.uniform_unseen(users, (self.num_negatives * self.candidates,))
        with torch.no_grad():
            scores = model.score(users, pool).view(len(users), self.num_negatives, self.candidates)
        best = scores.argmax(-1, keepdim=True)
        return pool.view(len(users), self.num_negatives, self.candidates).gather(-1, best).squeeze(-1)
