"""Training objectives over a positive's score and its candidates' scores.

A loss says which candidates it scores against (`candidates`), which samplers it cannot train with
(`sampler_conflict`, from what a sampler declares: `DeclaredSampling`), and which prediction metrics
judge it at validation (`prediction_metrics`): the module and the config check read these, so a new
loss is a class and a YAML file.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys_lightning.metrics import PointwiseMetrics, PredictionMetric, RatingErrors
from recsys_lightning.ranges import FLAG, NON_NEGATIVE, POSITIVE


@dataclass
class ScoredCandidates:
    """One training batch as a loss sees it.

    `negative` is None for losses that score no candidates (`Candidates.NONE`). Per-example negatives
    are [B, N]. When `rows` [B] is set, `negative` is instead one row of scores per distinct user of
    the batch, against a shared list of items (the whole catalogue, or a sampler's pool), and `rows`
    names each example's row: a softmax then normalises once per user, not once per example.
    `negative_valid` is False where a candidate is one of the user's positives (a pool's accidental
    hits); `negative_count` [N] is how often a pool drew each of its items; `*_log_q` are log
    sampling probabilities for the log-Q correction; `ratings` are explicit targets for regression
    losses; `explicit_negative` scores pairs the data marks as negatives (target 0), for losses with
    `uses_explicit_negatives`.
    """

    positive: Tensor
    negative: Tensor | None = None
    negative_valid: Tensor | None = None
    positive_log_q: Tensor | None = None
    negative_log_q: Tensor | None = None
    ratings: Tensor | None = None
    explicit_negative: Tensor | None = None
    rows: Tensor | None = None
    negative_count: Tensor | None = None

    def per_example(self) -> tuple[Tensor, Tensor | None]:
        """Negative scores [B, N] and their weights (None: all 1), for losses that sum over each
        example's negatives: a shared pool's row repeated per example, hits weighted 0, draws counted."""
        if self.rows is None:
            return self.negative, None if self.negative_valid is None else self.negative_valid.float()
        weight = self.negative_valid[self.rows].float()
        if self.negative_count is not None:
            weight = weight * self.negative_count
        return self.negative[self.rows], weight

    def pool_log_normaliser(self, temperature: float, log_q_correction: bool) -> Tensor:
        """log sum exp of each distinct user's candidate logits, with hits masked, draws counted and
        the log-Q correction applied: the softmax denominator without the positive, per row [U]."""
        logits = self.negative if temperature == 1.0 else self.negative / temperature  # skips a pass over [U, N]
        column_offset = None  # one [N] term, added in one pass: log of the draw count, minus log q
        if self.negative_count is not None:
            column_offset = self.negative_count.log()
        if log_q_correction and self.negative_log_q is not None:
            column_offset = -self.negative_log_q if column_offset is None else column_offset - self.negative_log_q
        if column_offset is not None:
            logits = logits + column_offset
        if self.negative_valid is not None:
            # In place on a tensor made here, or on the model's fresh scores: no backward reads either.
            logits = logits.masked_fill_(~self.negative_valid, -torch.inf)
        return torch.logsumexp(logits, -1)


class Candidates(Enum):
    """What a positive is scored against in training."""

    SAMPLED = "the sampler's negatives, per example or one pool per batch"
    CATALOGUE = "every item the user has not trained on"
    NONE = "nothing: the positive's own score is the prediction"


class DeclaredSampling(Protocol):
    """What a sampler class declares about its negatives (`samplers.NegativeSampler` says what each
    means): all a loss reads to accept or refuse it, so losses import no sampler and a new sampler
    trains with every loss its declarations allow."""

    draws_from_batch: bool
    uniform_unseen: bool


class RankingLoss(nn.Module):
    """Base of all losses. `l2` weighs the model's penalty on the batch's embeddings: it is tuned with the loss.

    `uses_explicit_negatives`: pairs the data marks as negatives (target 0) are trained on as label 0.
    `predicts_ratings`: scores are ratings, so the data must have them and the model scores around their mean.
    `monitor`: the metric a run of this loss is judged by unless the user names another (monitor.py).
    """

    candidates = Candidates.SAMPLED
    prediction_metrics: tuple[type[PredictionMetric], ...] = ()
    uses_explicit_negatives = False
    predicts_ratings = False
    monitor = "val/ndcg@10"

    def __init__(self, l2: Annotated[float, NON_NEGATIVE] = 0.0) -> None:
        super().__init__()
        self.l2 = l2

    @classmethod
    def sampler_conflict(cls, sampler: type[DeclaredSampling]) -> str | None:
        """Why this loss cannot train with negatives from `sampler`, or None when it can, read from what
        the sampler class declares (`DeclaredSampling`), not from which class it is.

        Checked before any data is loaded, so a mismatch costs the user nothing.
        """
        return None

    def forward(self, batch: ScoredCandidates) -> Tensor:
        raise NotImplementedError


def _weighted_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp(min=1)


def _softmax_of_positive(positive_logit: Tensor, log_normaliser: Tensor) -> Tensor:
    """Mean cross-entropy of each positive against the candidates whose log-sum-exp is `log_normaliser`."""
    return (torch.logaddexp(log_normaliser, positive_logit) - positive_logit).mean()


class BPRLoss(RankingLoss):
    """Bayesian Personalised Ranking (Rendle et al. 2009): -log sigmoid(s_pos - s_neg), mean over negatives."""

    def forward(self, batch: ScoredCandidates) -> Tensor:
        negative, weight = batch.per_example()
        return _weighted_mean(-F.logsigmoid(batch.positive.unsqueeze(-1) - negative), weight)


class BCELoss(RankingLoss):
    """Pointwise log loss: every (user, positive) is labelled 1 and every (user, sampled negative) 0.

    In-batch negatives are rejected: they are drawn in proportion to popularity, and a pointwise
    label 0 on them, with nothing to correct that, pushes popular items down for everyone.
    """

    prediction_metrics = (PointwiseMetrics,)
    uses_explicit_negatives = True

    @classmethod
    def sampler_conflict(cls, sampler: type[DeclaredSampling]) -> str | None:
        if sampler.draws_from_batch:
            return "in-batch negatives are popularity-biased and pointwise BCE has no correction for that"
        return None

    def forward(self, batch: ScoredCandidates) -> Tensor:
        positive = F.binary_cross_entropy_with_logits(batch.positive, torch.ones_like(batch.positive), reduction="sum")
        negative, weight = batch.per_example()
        negative = F.binary_cross_entropy_with_logits(negative, torch.zeros_like(negative), reduction="none")
        total = positive + (negative.sum() if weight is None else (negative * weight).sum())
        count = len(batch.positive) + (negative.numel() if weight is None else weight.sum())
        if batch.explicit_negative is not None:
            labelled = batch.explicit_negative
            total = total + F.binary_cross_entropy_with_logits(labelled, torch.zeros_like(labelled), reduction="sum")
            count = count + labelled.numel()
        return total / count


class SampledSoftmaxLoss(RankingLoss):
    """Cross-entropy of the positive against its sampled candidates (Jean et al. 2015).

    With `log_q_correction`, each candidate's logit is lowered by the log of its sampling probability
    (Yi et al. 2019, "Sampling-bias-corrected neural modeling"), which makes in-batch and popularity
    negatives estimate the full softmax instead of over-penalising popular items.
    """

    def __init__(
        self,
        l2: Annotated[float, NON_NEGATIVE] = 0.0,
        temperature: Annotated[float, POSITIVE] = 1.0,
        log_q_correction: Annotated[bool, FLAG] = True,
    ) -> None:
        super().__init__(l2)
        self.temperature = temperature
        self.log_q_correction = log_q_correction

    def forward(self, batch: ScoredCandidates) -> Tensor:
        positive = batch.positive / self.temperature
        if self.log_q_correction and batch.positive_log_q is not None:
            positive = positive - batch.positive_log_q
        if batch.rows is not None:  # a shared pool: one normaliser per distinct user
            return _softmax_of_positive(positive, batch.pool_log_normaliser(self.temperature, self.log_q_correction)[batch.rows])
        logits = batch.negative / self.temperature
        if self.log_q_correction and batch.negative_log_q is not None:
            logits = logits - batch.negative_log_q
        if batch.negative_valid is not None:
            logits = logits.masked_fill(~batch.negative_valid, -torch.inf)
        return _softmax_of_positive(positive, torch.logsumexp(logits, -1))


class FullSoftmaxLoss(RankingLoss):
    """Softmax over the whole catalogue: the positive against every item the user has not trained on.

    Exact where sampled softmax estimates; it costs one `score_all` per distinct user of the batch,
    which is cheap while the catalogue is small (thousands of items). No negatives are drawn, so any
    sampler is accepted and none is used.
    """

    candidates = Candidates.CATALOGUE

    def __init__(self, l2: Annotated[float, NON_NEGATIVE] = 0.0, temperature: Annotated[float, POSITIVE] = 1.0) -> None:
        super().__init__(l2)
        self.temperature = temperature

    def forward(self, batch: ScoredCandidates) -> Tensor:
        # `negative` holds each distinct user's scores of every item, the user's training positives
        # at -inf: the normaliser is computed once per user, and each positive added back to it.
        log_normaliser = batch.pool_log_normaliser(self.temperature, log_q_correction=False)[batch.rows]
        return _softmax_of_positive(batch.positive / self.temperature, log_normaliser)


class MSELoss(RankingLoss):
    """Explicit-rating regression, the classic rating-prediction MF: (score - rating)^2.

    No negatives are drawn. Only the uniform sampler, the default, is accepted: choosing another
    would suggest it changes something.
    """

    candidates = Candidates.NONE
    prediction_metrics = (RatingErrors,)
    predicts_ratings = True
    monitor = "val/rmse"

    @classmethod
    def sampler_conflict(cls, sampler: type[DeclaredSampling]) -> str | None:
        return None if sampler.uniform_unseen else "rating regression uses no negatives"

    def forward(self, batch: ScoredCandidates) -> Tensor:
        return F.mse_loss(batch.positive, batch.ratings)
