"""Training objectives over a positive's score and its candidates' scores.

A loss says which candidates it scores against (`candidates`), which samplers it cannot train with
(`sampler_conflict`), and which prediction metrics judge it at validation (`prediction_metrics`):
the module and the config check read these, so a new loss is a class and a YAML file.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys_lightning.metrics import PointwiseMetrics, PredictionMetric, RatingErrors
from recsys_lightning.samplers import InBatchSampler, NegativeSampler, UniformSampler


@dataclass
class ScoredCandidates:
    """One training batch as a loss sees it.

    `negative` is None for losses that score no candidates (`Candidates.NONE`); `negative_valid` is
    False where a negative is in fact one of the user's positives (in-batch negatives can be);
    `*_log_q` are log sampling probabilities for the log-Q correction; `ratings` are explicit
    targets for regression losses; `explicit_negative` scores pairs the data marks as negatives
    (target 0), for losses with `uses_explicit_negatives`.
    """

    positive: Tensor
    negative: Tensor | None = None
    negative_valid: Tensor | None = None
    positive_log_q: Tensor | None = None
    negative_log_q: Tensor | None = None
    ratings: Tensor | None = None
    explicit_negative: Tensor | None = None


class Candidates(Enum):
    """What a positive is scored against in training."""

    SAMPLED = "the sampler's negatives"
    CATALOGUE = "every item the user has not trained on"
    NONE = "nothing: the positive's own score is the prediction"


class RankingLoss(nn.Module):
    """Base of all losses. `l2` weighs the model's penalty on the batch's embeddings: it is tuned with the loss.

    `uses_explicit_negatives`: pairs the data marks as negatives (target 0) are trained on as label 0.
    """

    candidates = Candidates.SAMPLED
    prediction_metrics: tuple[type[PredictionMetric], ...] = ()
    uses_explicit_negatives = False

    def __init__(self, l2: float = 0.0) -> None:
        super().__init__()
        self.l2 = l2

    @classmethod
    def sampler_conflict(cls, sampler: type[NegativeSampler]) -> str | None:
        """Why this loss cannot train with negatives from `sampler`, or None when it can.

        Checked before any data is loaded, so a mismatch costs the user nothing.
        """
        return None

    def forward(self, batch: ScoredCandidates) -> Tensor:
        raise NotImplementedError


def _masked_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    if valid is None:
        return values.mean()
    return (values * valid).sum() / valid.sum().clamp(min=1)


class BPRLoss(RankingLoss):
    """Bayesian Personalised Ranking (Rendle et al. 2009): -log sigmoid(s_pos - s_neg), mean over negatives."""

    def forward(self, batch: ScoredCandidates) -> Tensor:
        return _masked_mean(-F.logsigmoid(batch.positive.unsqueeze(-1) - batch.negative), batch.negative_valid)


class BCELoss(RankingLoss):
    """Pointwise log loss: every (user, positive) is labelled 1 and every (user, sampled negative) 0.

    In-batch negatives are rejected: they are drawn in proportion to popularity, and a pointwise
    label 0 on them, with nothing to correct that, pushes popular items down for everyone.
    """

    prediction_metrics = (PointwiseMetrics,)
    uses_explicit_negatives = True

    @classmethod
    def sampler_conflict(cls, sampler: type[NegativeSampler]) -> str | None:
        if issubclass(sampler, InBatchSampler):
            return "in-batch negatives are popularity-biased and pointwise BCE has no correction for that"
        return None

    def forward(self, batch: ScoredCandidates) -> Tensor:
        positive = F.binary_cross_entropy_with_logits(batch.positive, torch.ones_like(batch.positive), reduction="sum")
        negative = F.binary_cross_entropy_with_logits(batch.negative, torch.zeros_like(batch.negative), reduction="none")
        valid = batch.negative_valid
        total = positive + (negative.sum() if valid is None else (negative * valid).sum())
        count = len(batch.positive) + (negative.numel() if valid is None else valid.sum())
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

    def __init__(self, l2: float = 0.0, temperature: float = 1.0, log_q_correction: bool = True) -> None:
        super().__init__(l2)
        self.temperature = temperature
        self.log_q_correction = log_q_correction

    def forward(self, batch: ScoredCandidates) -> Tensor:
        logits = torch.cat([batch.positive.unsqueeze(-1), batch.negative], -1) / self.temperature
        if self.log_q_correction and batch.negative_log_q is not None:
            logits = logits - torch.cat([batch.positive_log_q.unsqueeze(-1), batch.negative_log_q], -1)
        if batch.negative_valid is not None:
            keep = torch.cat([torch.ones_like(batch.negative_valid[:, :1]), batch.negative_valid], -1)
            logits = logits.masked_fill(~keep, -torch.inf)
        return -torch.log_softmax(logits, -1)[:, 0].mean()


class FullSoftmaxLoss(RankingLoss):
    """Softmax over the whole catalogue: the positive against every item the user has not trained on.

    Exact where sampled softmax estimates; it costs one `score_all` per batch, which is cheap while
    the catalogue is small (thousands of items). No negatives are drawn, so any sampler is accepted
    and none is used.
    """

    candidates = Candidates.CATALOGUE

    def __init__(self, l2: float = 0.0, temperature: float = 1.0) -> None:
        super().__init__(l2)
        self.temperature = temperature

    def forward(self, batch: ScoredCandidates) -> Tensor:
        # `negative` holds the scores of every item, the positive's included, the user's other
        # training positives at -inf. Skipping a division by 1 saves two passes over [B, num_items].
        logits = batch.negative if self.temperature == 1.0 else batch.negative / self.temperature
        return (torch.logsumexp(logits, -1) - batch.positive / self.temperature).mean()


class MSELoss(RankingLoss):
    """Explicit-rating regression, the classic rating-prediction MF: (score - rating)^2.

    No negatives are drawn. Only the uniform sampler, the default, is accepted: choosing another
    would suggest it changes something.
    """

    candidates = Candidates.NONE
    prediction_metrics = (RatingErrors,)

    @classmethod
    def sampler_conflict(cls, sampler: type[NegativeSampler]) -> str | None:
        return None if issubclass(sampler, UniformSampler) else "rating regression uses no negatives"

    def forward(self, batch: ScoredCandidates) -> Tensor:
        return F.mse_loss(batch.positive, batch.ratings)
