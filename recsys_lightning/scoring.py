"""From a training batch to the scores a loss reads: one function per kind of `Candidates`."""

from __future__ import annotations

import torch
from torch import Tensor

from recsys_lightning.data.batches import TrainingBatch
from recsys_lightning.data.positives import TrainingPositives
from recsys_lightning.losses import Candidates, ScoredCandidates
from recsys_lightning.models.base import Recommender
from recsys_lightning.samplers import NegativeSampler, SharedPool


def score_candidates(
    candidates: Candidates,
    model: Recommender,
    batch: TrainingBatch,
    positives: TrainingPositives,
    sampler: NegativeSampler,
    explicit_negatives: Tensor | None = None,
) -> tuple[ScoredCandidates, Tensor]:
    """The batch scored as the loss needs it, and the model's penalty on the rows it touched.

    `explicit_negatives` [N, 2] are (user, item) pairs the data marks as negatives; when given, as
    many as the batch has positives are drawn and scored.
    """
    if candidates is Candidates.CATALOGUE:
        return _against_catalogue(model, batch, positives)
    if candidates is Candidates.NONE:
        scores, penalty = model.score_with_penalty(batch.users, batch.items)
        return ScoredCandidates(positive=scores, ratings=batch.ratings), penalty
    return _against_sampled(model, batch, positives, sampler, explicit_negatives)


def _against_sampled(
    model: Recommender, batch: TrainingBatch, positives: TrainingPositives, sampler: NegativeSampler, explicit_negatives: Tensor | None
) -> tuple[ScoredCandidates, Tensor]:
    negatives = sampler.sample(batch.users, batch.items, model)
    if isinstance(negatives, SharedPool):
        candidates, penalty = _against_pool(model, batch, positives, sampler, negatives)
    else:
        items = torch.cat([batch.items.unsqueeze(1), negatives], 1)
        scores, penalty = model.score_with_penalty(batch.users, items)
        log_q = sampler.log_probability(items)
        candidates = ScoredCandidates(
            positive=scores[:, 0],
            negative=scores[:, 1:],
            positive_log_q=None if log_q is None else log_q[:, 0],
            negative_log_q=None if log_q is None else log_q[:, 1:],
        )
    candidates.ratings = batch.ratings
    if explicit_negatives is not None:  # as many explicit negatives as positives, drawn at random
        drawn = torch.randint(len(explicit_negatives), (len(batch),), generator=sampler.generator, device=batch.users.device)
        pairs = explicit_negatives[drawn]
        candidates.explicit_negative = model.score(pairs[:, 0], pairs[:, 1])
    return candidates, penalty


def _against_pool(
    model: Recommender, batch: TrainingBatch, positives: TrainingPositives, sampler: NegativeSampler, pool: SharedPool
) -> tuple[ScoredCandidates, Tensor]:
    """Each distinct user of the batch against the pool, by one matmul; the pool's items that are the
    user's training positives (its own positive included) are masked as accidental hits."""
    users, rows = torch.unique(batch.users, return_inverse=True)
    positive_scores, penalty = model.score_with_penalty(batch.users, batch.items)
    candidates = ScoredCandidates(
        positive=positive_scores,
        negative=model.score_items(users, pool.items),
        negative_valid=~positives.held(users, pool.items),
        positive_log_q=sampler.log_probability(batch.items),
        negative_log_q=sampler.log_probability(pool.items),
        rows=rows,
        negative_count=pool.counts,
    )
    return candidates, penalty


def _against_catalogue(model: Recommender, batch: TrainingBatch, positives: TrainingPositives) -> tuple[ScoredCandidates, Tensor]:
    """Each distinct user of the batch against every item, its training positives hidden; the loss adds
    each example's positive back, so a user's softmax normaliser is computed once, not once per example."""
    positive_scores, penalty = model.score_with_penalty(batch.users, batch.items)
    users, rows = torch.unique(batch.users, return_inverse=True)
    scores = model.score_all(users)
    scores.index_put_(positives.coordinates(users), torch.tensor(-torch.inf, device=scores.device))  # fresh scores: no copy
    return ScoredCandidates(positive=positive_scores, negative=scores, rows=rows), penalty
