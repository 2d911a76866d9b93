"""Two stages whose second is a trained re-ranker run (rerank/trained.py), and why it moved each item.

A linear ranker's score is a sum of weight x feature, so how much each feature lifted a candidate above
the user's average candidate is exact: w_f x (x_f - the mean of x_f over the user's candidates). Summed
over the features it is the candidate's score minus the average candidate's (the bias and a feature equal
across a list, such as the user's activity, cancel). The retriever's own order (its score, gap and rank)
is shown as the retrieval rank; the features that moved an item are the others with the largest lifts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from recsys_lightning.data.catalogue import PARTS
from recsys_lightning.rerank.trained import TrainedReranker
from recsys_lightning.serving.service import Recommendations, RecommendationService, TwoStageService

RETRIEVER_ORDER = ("retriever_z", "retriever_gap", "log_rank")  # the retriever's ordering, not a reason to move from it


def feature_lifts(weights: Tensor, features: Tensor, present: Tensor) -> Tensor:
    """Each feature's lift [U, N, F] of each candidate over the user's average present candidate:
    `weights` [F] x (`features` [U, N, F] - their mean over the candidates where `present` [U, N])."""
    mask = present.unsqueeze(-1).to(features.dtype)
    mean = (features * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
    return weights * (features - mean)


def moved_by(lifts: Tensor, names: Sequence[str], count: int = 3) -> list[str]:
    """Per row of `lifts` [k, F], the `count` features outside the retriever's own order with the largest
    lifts in size, signed: "ease_z +0.84, year -0.12"."""
    others = [position for position, name in enumerate(names) if name not in RETRIEVER_ORDER]
    if not others:
        return [""] * len(lifts)
    chosen = lifts[:, others]
    order = chosen.abs().argsort(dim=1, descending=True)[:, :count]
    return [
        ", ".join(f"{names[others[position]]} {float(row[position]):+.2f}" for position in positions)
        for row, positions in zip(chosen.tolist(), order.tolist())
    ]


class RerankerService(TwoStageService):
    """The retriever's top `run.candidates` (the count the ranker was trained on) of each user, reordered by
    the ranker's score of their features; users answered by popularity keep the retriever's answer."""

    def __init__(
        self,
        run: TrainedReranker,
        retrieval: RecommendationService,
        exclude: Sequence[str] = PARTS,
        min_history: int = 1,
        chunk_size: int = 1024,
    ) -> None:
        super().__init__(run, retrieval, run.candidates, exclude, min_history, chunk_size)

    @property
    def ranking(self) -> str:
        retriever = self.retrieval.run.model_name
        return (
            f"{self.run.model_name} re-ranking the top {self.candidates} of {retriever} (the count it was trained on); "
            f"score is the re-ranker's, retrieval_score and retrieval_rank {retriever}'s; moved_by: the features that "
            "lifted (+) or sank (-) the item most against the user's average candidate"
        )

    def recommend(self, users: Tensor, k: int) -> Recommendations:
        return self.explain(users, k)[0]

    @torch.no_grad()
    def explain(self, users: Tensor, k: int) -> tuple[Recommendations, Tensor, Tensor]:
        """The top k of `users` with, per item, its rank in the retriever's list [B, k] (from 1) and its
        feature lifts [B, k, F] (0 for users answered by popularity)."""
        k = min(k, self.max_k)
        proposed = self.retrieval.recommend(users, self.candidates)
        scores = proposed.scores.clone()
        lifts = torch.zeros(*scores.shape, len(self.run.features.names))
        personal = torch.nonzero(~proposed.fallback).flatten()
        if len(personal):
            retrieval_scores = proposed.scores[personal]
            present = torch.isfinite(retrieval_scores)
            features = self.run.features(users[personal], proposed.items[personal], retrieval_scores)
            scores[personal] = self.run.scores(features, present).masked_fill(~present, -torch.inf)
            lifts[personal] = feature_lifts(self.model.weights.weight[0], features, present)
        best_scores, positions = scores.topk(k, dim=1)
        answer = Recommendations(
            users, proposed.items.gather(1, positions), best_scores, proposed.fallback, proposed.scores.gather(1, positions)
        )
        return answer, positions + 1, lifts.gather(1, positions[..., None].expand(-1, -1, lifts.shape[-1]))
