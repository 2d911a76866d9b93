"""From a training batch to the scores a loss reads: one function per kind of `Candidates`."""

from __future__ import annotations

import torch
from torch import Tensor

from recsys_lightning.data.batches import TrainingBatch
from recsys_lightning.data.positives import TrainingPositives
from recsys_lightning.losses import Candidates, ScoredCandidates
from recsys_lightning.models.base import Recommender
from recsys_lightning.samplers import NegativeSampler


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
    return _against_sampled(model, batch, sampler, explicit_negatives)


def _against_sampled(
    model: Recommender, batch: TrainingBatch, sampler: NegativeSampler, explicit_negatives: Tensor | None
) -> tuple[ScoredCandidates, Tensor]:
    negatives = sampler.sample(batch.users, batch.items, model)
    items = torch.cat([batch.items.unsqueeze(1), negatives], 1)
    scores, penalty = model.score_with_penalty(batch.users, items)
    log_q = sampler.log_probability(items)
    explicit_negative = None
    if explicit_negatives is not None:  # as many explicit negatives as positives, drawn at random
        drawn = torch.randint(len(explicit_negatives), (len(batch),), generator=sampler.generator, device=batch.users.device)
        pairs = explicit_negatives[drawn]
        explicit_negative = model.score(pairs[:, 0], pairs[:, 1])
    candidates = ScoredCandidates(
        positive=scores[:, 0],
        negative=scores[:, 1:],
        negative_valid=sampler.valid_negatives(batch.users, negatives),
        positive_log_q=None if log_q is None else log_q[:, 0],
        negative_log_q=None if log_q is None else log_q[:, 1:],
        ratings=batch.ratings,
        explicit_negative=explicit_negative,
    )
    return candidates, penalty


def _against_catalogue(model: Recommender, batch: TrainingBatch, positives: TrainingPositives) -> tuple[ScoredCandidates, Tensor]:
    """Every item is a candidate; the user's other training positives are hidden from the softmax."""
    positive_scores, penalty = model.score_with_penalty(batch.users, batch.items)
    scores = model.score_all(batch.users)
    rows, items = positives.coordinates(batch.users)
    others = items != batch.items[rows]
    scores = scores.index_put((rows[others], items[others]), torch.tensor(-torch.inf, device=scores.device))
    return ScoredCandidates(positive=positive_scores, negative=scores), penalty
