"""The re-ranker's model and its listwise objective."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from torch import Tensor, nn

from recsys_lightning.ranges import TEXT, ListOf

# The feature the ranker starts from: with weight 1 on it the first ranking is the retriever's own.
RETRIEVER_FEATURE = "retriever_z"


class LinearReranker(nn.Module):
    """score(u, i) = w . features(u, i) + b over the named candidate features (rerank/features.py).

    Starts as the retriever (weight 1 on `retriever_z`, 0 elsewhere), so training moves away from its
    ranking only as far as the listwise loss pays for. On ML-100K a linear ranker over these features
    and EASE's score is what passes 1.02x the retriever (bench/RESULTS.md, issue 26 item 1).
    """

    def __init__(self, features: Annotated[Sequence[str], ListOf(TEXT, 1, "[retriever_z,ease_z]")]) -> None:
        super().__init__()
        self.features = list(features)
        self.weights = nn.Linear(len(self.features), 1)
        with torch.no_grad():
            self.weights.weight.zero_()
            self.weights.bias.zero_()
            if RETRIEVER_FEATURE in self.features:
                self.weights.weight[0, self.features.index(RETRIEVER_FEATURE)] = 1.0

    def forward(self, features: Tensor) -> Tensor:
        """Scores [U, N] of candidate features [U, N, len(self.features)]."""
        return self.weights(features).squeeze(-1)


def listwise_loss(scores: Tensor, targets: Tensor) -> Tensor:
    """Softmax cross-entropy over each user's candidates, the mean of -log p over the user's positives
    among them, averaged over users (each given at least one positive). -inf scores (padding) get p = 0."""
    log_probabilities = torch.log_softmax(scores, dim=1)
    positives = targets.to(log_probabilities.dtype)
    picked = torch.where(targets, log_probabilities, torch.zeros_like(log_probabilities))
    return -(picked.sum(1) / positives.sum(1)).mean()
