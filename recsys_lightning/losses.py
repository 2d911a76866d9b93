"""Training objectives over a positive score and its sampled negatives' scores."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class RankingLoss(nn.Module):
    """A loss over `positive_scores` [B] and `negative_scores` [B, N].

    `l2` weighs the model's penalty on the batch's embeddings; it lives here because it is part of
    the objective a user tunes together with the loss.
    """

    def __init__(self, l2: float = 0.0) -> None:
        super().__init__()
        self.l2 = l2


class BPRLoss(RankingLoss):
    """Bayesian Personalised Ranking (Rendle et al. 2009): -log sigmoid(s_pos - s_neg), mean over negatives."""

    def forward(self, positive_scores: Tensor, negative_scores: Tensor) -> Tensor:
        return -F.logsigmoid(positive_scores.unsqueeze(-1) - negative_scores).mean()
