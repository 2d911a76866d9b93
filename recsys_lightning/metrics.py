"""Validation and test metrics as torchmetrics states that sum under DDP: top-K ranking metrics over
a full ranking of the catalogue, beyond-accuracy catalogue metrics, and the metrics of what a loss
predicts (ratings, click probabilities)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from recsys_lightning.data.batches import RankingChunk
from recsys_lightning.ranking import hits

METRIC_NAMES = ("recall", "ndcg", "hit_rate", "precision", "mrr")  # RankingMetrics: validation and test, at each eval.ks
CATALOGUE_METRIC_NAMES = ("coverage", "novelty")  # CatalogueMetrics: test only, at each eval.ks


def per_user_metrics(hits: Tensor, num_relevant: Tensor, ks: Sequence[int]) -> Tensor:
    """[len(METRIC_NAMES), len(ks), B] metric values for each user.

    `hits` [B, >= max(ks)] marks which of a user's ranked items are held out, best first;
    `num_relevant` [B] counts the user's held-out items (at least one).

    - recall@K = hits in top K / |held-out|
    - ndcg@K = DCG@K / IDCG@K, gains 1/log2(rank + 1), IDCG over min(K, |held-out|) hits
    - hit_rate@K = 1 if any hit in top K
    - precision@K = hits in top K / K
    - mrr@K = 1 / rank of the first hit in top K, 0 if none
    """
    max_k = max(ks)
    # Ranks past the ranked items (at most the catalogue) hold no hit, so nothing is sized by a k
    # (eval.ks=[100000000] once asked for B x 10^8 doubles): the columns stop at the ranked items.
    width = max(1, min(max_k, hits.shape[1]))
    hits = torch.nn.functional.pad(hits[:, :width].to(torch.float64), (0, width - min(width, hits.shape[1])))
    num_relevant = num_relevant.to(torch.float64)
    hit_counts = hits.cumsum(1)
    dcg = (hits * _discounts(width, hits.device)).cumsum(1)
    ideal_width = max(width, min(max_k, int(num_relevant.max()))) if len(num_relevant) else width  # held-out items, at most
    ideal_dcg = _discounts(ideal_width, hits.device).cumsum(0)
    ranks = torch.arange(1, width + 1, device=hits.device, dtype=torch.float64)
    first_hit_rank = torch.where(hits > 0, ranks, torch.inf).min(1).values

    values = []
    for k in ks:
        column = min(k, width) - 1
        hits_at_k = hit_counts[:, column]
        ideal_at_k = ideal_dcg[(num_relevant.clamp(max=k) - 1).long()]
        reciprocal_rank = torch.where(first_hit_rank <= k, 1.0 / first_hit_rank, 0.0)
        values.append(
            torch.stack([hits_at_k / num_relevant, dcg[:, column] / ideal_at_k, (hits_at_k > 0).double(), hits_at_k / k, reciprocal_rank])
        )
    return torch.stack(values, 1)


def _discounts(length: int, device: torch.device) -> Tensor:
    """1 / log2(rank + 1) for ranks 1..length."""
    return 1.0 / torch.log2(torch.arange(2, length + 2, device=device, dtype=torch.float64))


class RankingMetrics(Metric):
    """Recall, NDCG, HitRate, Precision and MRR at each K, averaged over evaluated users.

    States are per-metric sums and a user count, so `compute` after a DDP sync is exact.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, ks: Sequence[int] = (10, 20), sync_on_compute: bool = True) -> None:
        """`sync_on_compute=False` for a figure one process computes over all users alone (no DDP collective)."""
        super().__init__(sync_on_compute=sync_on_compute)
        self.ks = tuple(sorted(set(int(k) for k in ks)))
        self.add_state("totals", torch.zeros(len(METRIC_NAMES), len(self.ks), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_users", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    @property
    def max_k(self) -> int:
        return self.ks[-1]

    def update(self, hits: Tensor, num_relevant: Tensor) -> None:
        self.totals += per_user_metrics(hits, num_relevant, self.ks).sum(-1)
        self.num_users += len(num_relevant)

    def update_ranked(self, top_items: Tensor, chunk: RankingChunk, num_items: int) -> None:
        """Count the chunk's held-out items among each user's ranked `top_items` [B, >= max_k]."""
        found = hits(top_items, chunk.heldout_rows, chunk.heldout_items, num_items)
        self.update(found, torch.bincount(chunk.heldout_rows, minlength=len(chunk.users)))

    def compute(self) -> dict[str, Tensor]:
        means = self.totals / self.num_users.clamp(min=1)
        return {f"{name}@{k}": means[m, j] for m, name in enumerate(METRIC_NAMES) for j, k in enumerate(self.ks)}


class CatalogueMetrics(Metric):
    """Beyond accuracy: coverage@K (share of items in at least one user's top K) and novelty@K (mean
    self-information -log2 p(i) of recommended items, p(i) = share of users who have item i in train).

    States are per-item recommendation counts and sums, so they too are exact after a DDP sync.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, ks: Sequence[int], num_items: int) -> None:
        super().__init__()
        self.ks = tuple(sorted(set(int(k) for k in ks)))
        self.add_state("recommended", torch.zeros(len(self.ks), num_items, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("self_information", torch.zeros(len(self.ks), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("slots", torch.zeros(len(self.ks), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, top_items: Tensor, item_self_information: Tensor, shown: Tensor | None = None) -> None:
        """`shown` (bool, as `top_items`; None: all) is False where a top K outruns the items a user may be
        shown and ends in hidden ones: those were never recommended, so they count in neither metric."""
        for j, k in enumerate(self.ks):
            items = top_items[:, :k].reshape(-1) if shown is None else top_items[:, :k][shown[:, :k]]
            self.recommended[j] += torch.bincount(items, minlength=self.recommended.shape[1])
            self.self_information[j] += item_self_information[items].double().sum()
            self.slots[j] += items.numel()

    def compute(self) -> dict[str, Tensor]:
        values = {}
        for j, k in enumerate(self.ks):
            values[f"coverage@{k}"] = (self.recommended[j] > 0).double().mean()
            values[f"novelty@{k}"] = self.self_information[j] / self.slots[j].clamp(min=1)
        return values


class PredictionMetric(Metric):
    """Judges what a loss predicts beyond a ranking, on the held-out pairs of each validation chunk.

    A loss lists the kinds it needs (`RankingLoss.prediction_metrics`); the module builds only those.
    `names` are what `compute` returns, logged as `val/<name>`; `lower_is_better` are the ones a
    monitor must watch with mode=min.
    """

    names: tuple[str, ...] = ()
    lower_is_better: tuple[str, ...] = ()
    full_state_update = False
    is_differentiable = False

    def update(self, scores: Tensor, chunk: RankingChunk, chunk_seed: int) -> None:
        """`scores` [B, num_items] of the chunk's users, read and never written; `chunk_seed` is the
        same for a chunk at every validation, so whatever is drawn judges the same pairs each time."""
        raise NotImplementedError

    def histograms(self) -> dict[str, Tensor]:
        """Distributions worth a TensorBoard histogram, by name; read before `reset`."""
        return {}


class RatingErrors(PredictionMetric):
    """RMSE and MAE of the scores of held-out pairs against their ratings (losses that predict ratings)."""

    names = ("rmse", "mae")
    lower_is_better = ("rmse", "mae")
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("squared_error", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("absolute_error", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("errors", [], dist_reduce_fx="cat")

    def update(self, scores: Tensor, chunk: RankingChunk, chunk_seed: int) -> None:
        errors = scores[chunk.heldout_rows, chunk.heldout_items] - chunk.heldout_ratings
        self.squared_error += errors.square().sum()
        self.absolute_error += errors.abs().sum()
        self.count += len(errors)
        self.errors.append(errors.detach())

    def compute(self) -> dict[str, Tensor]:
        count = self.count.clamp(min=1)
        return {"rmse": (self.squared_error / count).sqrt(), "mae": self.absolute_error / count}

    def histograms(self) -> dict[str, Tensor]:
        errors = self.errors if isinstance(self.errors, Tensor) else torch.cat(self.errors) if self.errors else torch.zeros(0)
        return {"rating_error": errors.cpu()}


class PointwiseMetrics(PredictionMetric):
    """BCE and AUC on held-out positives, each paired with one uniform negative of the same user from
    the unseen items, for pointwise losses whose scores are click logits.

    AUC is the share of pairs whose positive scores higher (ties count half): it needs no threshold.
    Accuracy at logit 0 did, and a model trained on 4 negatives per positive puts nearly every logit
    below 0, so it read exactly 0.5 on these balanced pairs whatever the ranking.
    The negatives come from the chunk's own seed, so every validation epoch judges the same pairs.
    """

    names = ("bce", "auc")
    lower_is_better = ("bce",)

    def __init__(self) -> None:
        super().__init__()
        self.add_state("bce_sum", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("ordered", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("pairs", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, scores: Tensor, chunk: RankingChunk, chunk_seed: int) -> None:
        rows, items, negatives = self.pairs_of(chunk, chunk_seed, scores.shape[1])
        self.update_scored(scores[rows, items], scores[rows, negatives])

    @staticmethod
    def pairs_of(chunk: RankingChunk, chunk_seed: int, num_items: int) -> tuple[Tensor, Tensor, Tensor]:
        """(row, held-out item, drawn negative) of each pair judged, drawn from the chunk alone: a caller without
        the chunk's scores against every item (trainer=sharded) scores just these. With the chunk's `candidates`
        (eval.candidates=cold) the negatives are candidates too, as the ranking's items are, except for a user
        holding out every candidate left to them, who draws from the catalogue."""
        rows, items = chunk.heldout_rows, chunk.heldout_items
        allowed = torch.ones(len(chunk.users), num_items, dtype=torch.bool, device=rows.device)
        allowed[chunk.exclude_rows, chunk.exclude_items] = False
        allowed[rows, items] = False
        if chunk.candidates is not None:
            among_candidates = allowed & chunk.candidates
            allowed = torch.where(among_candidates.any(1, keepdim=True), among_candidates, allowed)
        generator = torch.Generator(device=rows.device).manual_seed(chunk_seed)
        counts = torch.bincount(rows, minlength=len(chunk.users))
        drawn = torch.multinomial(allowed.float(), int(counts.max()), replacement=True, generator=generator)
        position_in_row = torch.arange(len(rows), device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]
        return rows, items, drawn[rows, position_in_row]

    def update_scored(self, positive: Tensor, negative: Tensor) -> None:
        """Count pairs whose positive and negative scores are given."""
        logits = torch.cat([positive, negative])
        labels = torch.cat([torch.ones_like(positive), torch.zeros_like(negative)])
        self.bce_sum += F.binary_cross_entropy_with_logits(logits, labels) * len(labels)
        self.count += len(labels)
        self.ordered += (positive > negative).float().sum() + 0.5 * (positive == negative).float().sum()
        self.pairs += len(positive)

    def compute(self) -> dict[str, Tensor]:
        return {"bce": self.bce_sum / self.count, "auc": self.ordered / self.pairs.clamp(min=1)}


# -- what tables comparing runs show: a sweep's summary.csv and TensorBoard's HParams tab name their
# metric columns from here, so they agree with each other and with the names the metrics above log.
SUMMARY_RANKING = ("ndcg", "recall")  # on both splits, at each cut-off a table shows
SUMMARY_TEST_DETAIL = ("hit_rate", "mrr", *CATALOGUE_METRIC_NAMES)  # on test at the first cut-off, in a sweep's table
HPARAMS_KS = (5, 10, 20, 50, 100)  # the HParams tab's cut-offs; a run's other eval.ks are in its scalars
SWEEP_KS = (10,)  # a sweep table's one cut-off, that of its default order (val/ndcg@10)


def summary_metrics(ks: Sequence[int], test_detail: bool = False) -> list[str]:
    """Names (`val/ndcg@10`, ...) of the metrics a table comparing runs has a column for, whatever loss a
    run trained: SUMMARY_RANKING on both splits at each of `ks`, SUMMARY_TEST_DETAIL on test at `ks[0]`
    when `test_detail`, then what every kind of prediction metric reports, on both splits (empty cells for
    a run whose loss predicts none of it)."""
    splits = ("val", "test")
    names = [f"{split}/{name}@{k}" for split in splits for k in ks for name in SUMMARY_RANKING]
    if test_detail:
        names += [f"test/{name}@{ks[0]}" for name in SUMMARY_TEST_DETAIL]
    predicted = [name for kind in PredictionMetric.__subclasses__() for name in kind.names]
    return names + [f"{split}/{name}" for split in splits for name in predicted]
