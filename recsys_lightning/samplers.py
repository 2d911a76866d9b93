"""Negative samplers: for each positive (user, item), items the user is assumed not to like.

Every sampler draws a whole batch's negatives in one vectorised call; none loops over examples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from recsys_lightning.data.positives import TrainingPositives

if TYPE_CHECKING:
    from recsys_lightning.models.base import Recommender


class NegativeSampler(ABC):
    """Draws `num_negatives` items per positive, excluding the user's training positives.

    The module owns the training positives and lends them with `bind` once they are on the training
    device; the sampler keeps only what it derives from them (popularity weights).
    """

    def __init__(self, num_negatives: int = 1) -> None:
        if num_negatives < 1:
            raise ValueError(f"sampler.num_negatives must be >= 1, got {num_negatives}")
        self.num_negatives = num_negatives
        self.generator: torch.Generator | None = None

    def bind(self, positives: TrainingPositives) -> None:
        """Sample against these positives; they live on the training device."""
        self.positives = positives

    def reseed(self, seed: int) -> None:
        """Restart the sampler's own random stream: same seed, same negatives, on any run."""
        self.generator = torch.Generator(device=self.positives.device).manual_seed(seed)

    @abstractmethod
    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> Tensor:
        """Negatives [B, num_negatives] for the batch's `users` [B] and their `positive_items` [B]."""

    def log_probability(self, items: Tensor) -> Tensor | None:
        """Log probability that a draw is `items`, for log-Q correction; None where it is uniform."""
        return None

    def valid_negatives(self, users: Tensor, negatives: Tensor) -> Tensor | None:
        """False where a negative is one of the user's training positives; None if that cannot happen."""
        return None


class UniformSampler(NegativeSampler):
    """Uniform over the items a user has not interacted with in train."""

    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> Tensor:
        return self.positives.uniform_unseen(users, (self.num_negatives,), self.generator)


class PopularitySampler(NegativeSampler):
    """P(item) proportional to count^alpha (word2vec's 0.75 by default), never a training positive.

    Draws that hit a positive are redrawn, all of them at once, for at most `max_rounds` rounds;
    any left after that (users who own most of the popular mass) fall back to uniform negatives.
    """

    def __init__(self, num_negatives: int = 1, alpha: float = 0.75, max_rounds: int = 20) -> None:
        super().__init__(num_negatives)
        self.alpha = alpha
        self.max_rounds = max_rounds

    def bind(self, positives: TrainingPositives) -> None:
        super().bind(positives)
        weights = positives.item_counts.double().pow(self.alpha)
        self.probabilities = weights / weights.sum()

    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> Tensor:
        draw = lambda count: torch.multinomial(self.probabilities, count, replacement=True, generator=self.generator)  # noqa: E731
        negatives = draw(len(users) * self.num_negatives).view(len(users), self.num_negatives)
        for _ in range(self.max_rounds):
            rejected = self.positives.contains(users, negatives)
            if not rejected.any():
                return negatives
            negatives[rejected] = draw(int(rejected.sum()))
        rejected = self.positives.contains(users, negatives)
        fallback = self.positives.uniform_unseen(users, (self.num_negatives,), self.generator)
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
        offsets = torch.randint(1, max(batch_size, 2), (batch_size, self.num_negatives), generator=self.generator, device=users.device)
        others = (torch.arange(batch_size, device=users.device).unsqueeze(1) + offsets) % batch_size
        return positive_items[others]

    def log_probability(self, items: Tensor) -> Tensor:
        counts = self.positives.item_counts
        frequency = counts.double() / counts.sum()
        return frequency.clamp(min=1e-12).log()[items].float()

    def valid_negatives(self, users: Tensor, negatives: Tensor) -> Tensor:
        return ~self.positives.contains(users, negatives)


class HardNegativeSampler(NegativeSampler):
    """Dynamic negative sampling (Zhang et al. 2013): of `candidates` uniform unseen items, keep the one
    the current model scores highest, for each negative."""

    def __init__(self, num_negatives: int = 1, candidates: int = 8) -> None:
        super().__init__(num_negatives)
        self.candidates = candidates

    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> Tensor:
        pool = self.positives.uniform_unseen(users, (self.num_negatives * self.candidates,), self.generator)
        with torch.no_grad():
            scores = model.score(users, pool).view(len(users), self.num_negatives, self.candidates)
        best = scores.argmax(-1, keepdim=True)
        return pool.view(len(users), self.num_negatives, self.candidates).gather(-1, best).squeeze(-1)
