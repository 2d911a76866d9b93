"""Negative samplers: for each positive (user, item), items the user is assumed not to like.

Every sampler draws a whole batch's negatives in one vectorised call; none loops over examples.
Per-example samplers draw [B, num_negatives] items; pool samplers draw one `SharedPool` that every
example of the batch is scored against, so the batch costs one [users, D] x [D, pool] matmul.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import torch
from torch import Tensor

from recsys_lightning.data.positives import TrainingPositives
from recsys_lightning.errors import ConfigError
from recsys_lightning.ranges import NON_NEGATIVE, TEXT, Range
from recsys_lightning.retrieval import retrieve_for_every_user
from recsys_lightning.runs.other_runs import best_checkpoint_of, check_trained_on
from recsys_lightning.runs.trained_run import load_trained
from recsys_lightning.seeds import keyed_uniform

if TYPE_CHECKING:
    from recsys_lightning.models.base import Recommender


@dataclass(frozen=True)
class SharedPool:
    """Distinct items [N] every example of a batch is scored against, and how often each was drawn.

    Drawn items are kept once with their count rather than repeated: a softmax adds log(count) to
    the item's logit, a mean weighs it by count, the same sums at a fraction of the columns.
    """

    items: Tensor
    counts: Tensor

    @classmethod
    def of(cls, draws: Tensor) -> SharedPool:
        items, counts = torch.unique(draws, return_counts=True)
        return cls(items, counts)


class NegativeSampler(ABC):
    """Draws `num_negatives` items per positive, excluding the user's training positives.

    The module owns the training positives and lends them with `bind` once they are on the training
    device; the sampler keeps only what it derives from them (popularity weights).

    A loss decides whether it can train with a sampler from what the sampler class declares
    (`RankingLoss.sampler_conflict`), never from its name, so a new sampler sets these and needs no
    loss edited:
    - `draws_from_batch`: the negatives are the batch's own positives, so drawn in proportion to
      training popularity
    - `uniform_unseen`: each example's negatives are uniform over the items its user has not trained on
    """

    draws_from_batch = False
    uniform_unseen = False

    def __init__(self, num_negatives: Annotated[int, Range(1)] = 1) -> None:
        self.num_negatives = num_negatives
        self.generator: torch.Generator | None = None
        # Set by trainer=sharded: uniform and popularity draws hash (seed, user, positive item), so an example's
        # negatives are the same at any number of ranks.
        self.by_example = False
        self.seed = 0

    def bind(self, positives: TrainingPositives) -> None:
        """Sample against these positives; they live on the training device."""
        self.positives = positives

    def reseed(self, seed: int) -> None:
        """Restart the sampler's own random stream: same seed, same negatives, on any run."""
        self.generator = torch.Generator(device=self.positives.device).manual_seed(seed)
        self.seed = seed

    def uniforms(self, users: Tensor, positive_items: Tensor, count: int, draw: int = 0) -> Tensor:
        """[B, count] float64 uniforms for the batch's examples: the sampler's stream, or with `by_example` a
        hash of (seed, user, positive item, draw, column)."""
        if not self.by_example:
            return torch.rand((len(users), count), generator=self.generator, device=users.device, dtype=torch.float64)
        return keyed_uniform(self.seed, (users, positive_items, torch.full_like(users, draw)), count)

    @abstractmethod
    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> Tensor | SharedPool:
        """Negatives for the batch's `users` [B] and their `positive_items` [B]: [B, num_negatives] items,
        never a training positive of the row's user, or one `SharedPool` for the whole batch, which may
        hold any user's positives (the scoring masks those hits)."""

    def log_probability(self, items: Tensor) -> Tensor | None:
        """Log probability that a draw is `items`, for log-Q correction; None where it is uniform."""
        return None


class UniformSampler(NegativeSampler):
    """Uniform over the items a user has not interacted with in train."""

    uniform_unseen = True

    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> Tensor:
        return self.positives.unseen_at(users, self.uniforms(users, positive_items, self.num_negatives))


class PopularitySampler(NegativeSampler):
    """P(item) proportional to count^alpha (word2vec's 0.75 by default), never a training positive.

    Draws that hit a positive are redrawn, all of them at once, for at most `max_rounds` rounds;
    any left after that (users who own most of the popular mass) fall back to uniform negatives.
    """

    def __init__(
        self,
        num_negatives: Annotated[int, Range(1)] = 1,
        alpha: Annotated[float, NON_NEGATIVE] = 0.75,
        max_rounds: Annotated[int, Range(0)] = 20,
    ) -> None:
        super().__init__(num_negatives)
        self.alpha = alpha
        self.max_rounds = max_rounds

    def bind(self, positives: TrainingPositives) -> None:
        super().bind(positives)
        weights = positives.item_counts.double().pow(self.alpha)
        self.probabilities = weights / weights.sum()

    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> Tensor:
        if self.by_example:
            return self._sample_by_example(users, positive_items)
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

    def _sample_by_example(self, users: Tensor, positive_items: Tensor) -> Tensor:
        """`sample` with keyed uniforms: each round's draws by inverse CDF, rejected ones replaced by the next round's."""
        cumulative = self.probabilities.cumsum(0)
        last = len(cumulative) - 1

        def draw(round: int) -> Tensor:
            uniform = self.uniforms(users, positive_items, self.num_negatives, round)
            return torch.searchsorted(cumulative, uniform, right=True).clamp(max=last)

        negatives = draw(0)
        for round in range(1, self.max_rounds + 1):
            rejected = self.positives.contains(users, negatives)
            if not rejected.any():
                return negatives
            negatives = torch.where(rejected, draw(round), negatives)
        fallback = self.positives.unseen_at(users, self.uniforms(users, positive_items, self.num_negatives, self.max_rounds + 1))
        return torch.where(self.positives.contains(users, negatives), fallback, negatives)

    def log_probability(self, items: Tensor) -> Tensor:
        return self.probabilities.log()[items].float()


class InBatchSampler(NegativeSampler):
    """The batch's positives are the pool every example is scored against.

    Items then appear in proportion to their training frequency, which `log_probability` reports for
    log-Q correction. The pool holds each example's own positive and, often, other positives of the
    same user (accidental hits): the scoring masks them rather than the sampler redrawing. The pool's
    size is the batch's (`data.batch_size`), so there is no `num_negatives` to set.
    """

    draws_from_batch = True

    def __init__(self) -> None:
        super().__init__()

    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> SharedPool:
        return SharedPool.of(positive_items)

    def log_probability(self, items: Tensor) -> Tensor:
        counts = self.positives.item_counts
        frequency = counts.double() / counts.sum()
        return frequency.clamp(min=1e-12).log()[items].float()


class SharedPoolSampler(NegativeSampler):
    """One pool of `num_negatives` items per batch, drawn with probability proportional to count^alpha
    (alpha 0: uniform), shared by every example of the batch.

    Sampled softmax over a shared pool (Bengio and Senecal 2008; Yi et al. 2019) sees hundreds of
    negatives per example for the price of one matmul, where per-example negatives cost a gather of
    [B, N, D]. `log_probability` feeds the log-Q correction; draws that hit a user's positives are
    masked by the scoring.
    """

    def __init__(self, num_negatives: Annotated[int, Range(1)] = 256, alpha: Annotated[float, NON_NEGATIVE] = 0.0) -> None:
        super().__init__(num_negatives)
        self.alpha = alpha

    def bind(self, positives: TrainingPositives) -> None:
        super().bind(positives)
        weights = positives.item_counts.double().pow(self.alpha)  # 0^0 = 1: unseen items too, when uniform
        self.probabilities = weights / weights.sum()

    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> SharedPool:
        return SharedPool.of(torch.multinomial(self.probabilities, self.num_negatives, replacement=True, generator=self.generator))

    def log_probability(self, items: Tensor) -> Tensor:
        return self.probabilities.log()[items].float()


class HardNegativeSampler(NegativeSampler):
    """Dynamic negative sampling (Zhang et al. 2013): of `candidates` uniform unseen items, keep the one
    the current model scores highest, for each negative."""

    def __init__(self, num_negatives: Annotated[int, Range(1)] = 1, candidates: Annotated[int, Range(1)] = 8) -> None:
        super().__init__(num_negatives)
        self.candidates = candidates

    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> Tensor:
        pool = self.positives.uniform_unseen(users, (self.num_negatives * self.candidates,), self.generator)
        with torch.no_grad():
            scores = model.score(users, pool).view(len(users), self.num_negatives, self.candidates)
        best = scores.argmax(-1, keepdim=True)
        return pool.view(len(users), self.num_negatives, self.candidates).gather(-1, best).squeeze(-1)


class RetrievedSampler(NegativeSampler):
    """Uniform over the `candidates` items a retriever run ranks highest for the user, training positives
    left out: a re-ranker then learns to order what the retriever will hand it at serving time, not to
    tell a user's items from random ones.

    The candidates are retrieved once, when the sampler is bound, as a [num_users, candidates] table on
    the training device; a draw is one gather per batch. The retriever is the best checkpoint of
    `run_dir`, trained on this run's data and split.
    """

    def __init__(
        self,
        num_negatives: Annotated[int, Range(1)] = 1,
        run_dir: Annotated[str | None, TEXT] = None,
        candidates: Annotated[int, Range(1)] = 200,
    ) -> None:
        super().__init__(num_negatives)
        self.run_dir = run_dir
        self.candidates = candidates

    def bind(self, positives: TrainingPositives) -> None:
        super().bind(positives)
        if self.run_dir is None:
            raise ConfigError("sampler=retrieved needs the retriever's run: sampler.run_dir=<a run folder>, e.g. of experiment=ml100k_mf")
        retriever = load_trained(best_checkpoint_of(self.run_dir, "sampler.run_dir"))  # on the CPU: its catalogue is compared there
        check_trained_on(retriever.catalogue, positives, self.run_dir)
        items, scores = retrieve_for_every_user(retriever.model.to(positives.device), positives, self.candidates)
        # int32 halves the table (num_items < 2^31); -inf marks the tail of a user with fewer unseen items than candidates.
        self.table = items.int()
        self.num_found = torch.isfinite(scores).sum(1).clamp(min=1)

    def sample(self, users: Tensor, positive_items: Tensor, model: Recommender) -> Tensor:
        uniform = torch.rand(len(users), self.num_negatives, generator=self.generator, device=users.device, dtype=torch.float64)
        positions = (uniform * self.num_found[users].unsqueeze(1)).long()
        return self.table[users.unsqueeze(1), positions].long()
