"""Every ranked user's candidate list: a retriever's top N (seen items hidden), the features of each
candidate, and which candidates are the user's held-out items. Training, validation and test lists are
all built here, so the three are ranked alike."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.utils.data import Dataset

from recsys_lightning.data.batches import RankingChunk, RankingChunks
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.metrics import RankingMetrics
from recsys_lightning.models.base import Recommender
from recsys_lightning.rerank.features import CandidateFeatures
from recsys_lightning.retrieval import retrieve


@dataclass
class ListBatch:
    """Training lists of a batch of users: features [B, N, F], `present` and `targets` [B, N] bool.

    Not frozen: Lightning's device transfer rebuilds dataclass batches field by field."""

    features: Tensor
    present: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return len(self.targets)


class TrainingLists(Dataset):
    """The training lists of every user with at least one target among their candidates (the others give
    the listwise loss nothing to learn), indexed with a whole batch of positions at once."""

    def __init__(self, lists: list[ListChunk]) -> None:
        features, present, targets = (torch.cat([getattr(part, name) for part in lists]) for name in ("features", "present", "targets"))
        learnable = targets.any(1)
        self.features, self.present, self.targets = features[learnable], present[learnable], targets[learnable]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: Tensor) -> ListBatch:
        return ListBatch(self.features[index], self.present[index], self.targets[index])


@dataclass
class ListChunk:
    """One chunk of users' lists: features [U, N, F], candidate items [U, N] (best first by the retriever),
    `present` [U, N] (False where a list was padded past the user's unseen items), the users and their
    held-out items (`chunk`, as the test loop ranks them), and which candidates are held out (`targets`).

    Not frozen: Lightning's device transfer rebuilds dataclass batches field by field."""

    features: Tensor
    items: Tensor
    present: Tensor
    targets: Tensor
    chunk: RankingChunk

    def __len__(self) -> int:
        return len(self.items)

    @property
    def users(self) -> Tensor:
        """The chunk's users, as progress lines count them for any ranking chunk."""
        return self.chunk.users


def candidate_lists(
    retriever: Recommender, heldout: UserItemCSR, exclude: UserItemCSR, features: CandidateFeatures, n: int, chunk_size: int
) -> list[ListChunk]:
    """`retriever`'s top `n` unseen items (`exclude` hidden) of every user with `heldout` items, with their
    features; the held-out items are only marked, never added: one missed by the retriever stays a miss."""
    heldout = replace(heldout, values=torch.ones(len(heldout.indices)))  # the chunks carry ratings no metric here reads
    lists = []
    for chunk in RankingChunks(heldout, exclude, chunk_size):
        items, scores = retrieve(retriever, chunk.users, chunk.exclude_rows, chunk.exclude_items, n)
        is_heldout = torch.zeros(len(chunk.users), heldout.num_items, dtype=torch.bool)
        is_heldout[chunk.heldout_rows, chunk.heldout_items] = True
        with torch.no_grad():
            lists.append(ListChunk(features(chunk.users, items, scores), items, torch.isfinite(scores), is_heldout.gather(1, items), chunk))
    return lists


def ranked(scores: Tensor, lists: ListChunk, k: int) -> Tensor:
    """The chunk's candidate items [U, k], ordered by `scores` [U, N] (padding last)."""
    order = scores.masked_fill(~lists.present, -torch.inf).topk(min(k, scores.shape[1]), dim=1).indices
    return lists.items.gather(1, order)


def retriever_metrics(lists: list[ListChunk], ks: list[int], num_items: int) -> dict[str, float]:
    """The retriever alone measured on its own lists (its top K is the first K of each list)."""
    metrics = RankingMetrics(ks, sync_on_compute=False)
    for part in lists:
        metrics.update_ranked(part.items[:, : max(ks)], part.chunk, num_items)
    return {name: float(value) for name, value in metrics.compute().items()}


def ms_per_1000_users(
    retriever: Recommender, features: CandidateFeatures | None, ranker: torch.nn.Module | None, lists: list[ListChunk], n: int, k: int
) -> float:
    """Wall milliseconds per 1,000 of the lists' users to serve a top `k`, best of 3: without a ranker, the
    retriever's own top k; with one, the retriever's top n, their features and the ranker's top k."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        with torch.no_grad():
            for part in lists:
                chunk = part.chunk
                if ranker is None:
                    retrieve(retriever, chunk.users, chunk.exclude_rows, chunk.exclude_items, k)
                    continue
                items, scores = retrieve(retriever, chunk.users, chunk.exclude_rows, chunk.exclude_items, n)
                present = torch.isfinite(scores)
                order = ranker(features(chunk.users, items, scores)).masked_fill(~present, -torch.inf).topk(k, dim=1).indices
                items.gather(1, order)
        best = min(best, time.perf_counter() - start)
    users = sum(len(part) for part in lists)
    return 1e6 * best / max(users, 1)
