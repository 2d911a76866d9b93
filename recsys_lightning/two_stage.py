"""Two-stage recommendation measured: a retriever's top-N candidates per user re-scored by a second model,
beside each model alone, ranked as the test loop ranks (`evaluate retrieval.run_dir=...`).

The stages themselves are in retrieval.py; that the two runs were trained on the same data and split is
checked in runs/other_runs.py before they are compared.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import pandas as pd
import torch
from torch import Tensor

from recsys_lightning import progress
from recsys_lightning.data.batches import RankingChunk, RankingChunks
from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.metrics import RankingMetrics
from recsys_lightning.models.base import Recommender
from recsys_lightning.retrieval import rerank_scores, retrieve

# Per split evaluated: the parts hidden from the ranking and the part whose items are to be found.
PROTOCOL = {"test": (("train", "valid"), "test"), "valid": (("train",), "valid")}
STAGES = ("retriever", "re-ranker", "two-stage")


def compare_stages(
    retriever: Recommender,
    reranker: Recommender,
    catalogue: Catalogue,
    candidates: int,
    ks: Sequence[int],
    split: str = "test",
    chunk_size: int = 1024,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """Each stage alone and the two together, ranked as the test loop ranks (seen parts hidden, every user
    with held-out items): recall at `candidates`, NDCG and recall at each of `ks`, and milliseconds per
    1,000 users. Recall at `candidates` of the retriever (and of the two-stage ranking, a reordering of
    the same items) is the candidate recall: the share of held-out items the re-ranker gets to see.

    The catalogue records every user's split parts, so no data needs rebuilding; the models are on `device`.
    """
    hidden, heldout_part = PROTOCOL[split]
    heldout = catalogue.seen_in([heldout_part])
    heldout = replace(heldout, values=torch.ones(len(heldout.indices)))  # ratings the chunks carry; no ranking metric reads them
    with progress.building(f"{split} ranking chunks"):
        chunks = RankingChunks(heldout.to(device), catalogue.seen_in(hidden).to(device), chunk_size)
    depth = max(candidates, *ks)
    rankers: tuple[Callable[[RankingChunk], Tensor], ...] = (
        lambda chunk: retrieve(retriever, chunk.users, chunk.exclude_rows, chunk.exclude_items, depth)[0],
        lambda chunk: retrieve(reranker, chunk.users, chunk.exclude_rows, chunk.exclude_items, depth)[0],
        lambda chunk: two_stage_ranking(retriever, reranker, chunk, candidates),
    )
    rows = []
    for stage, ranker in zip(STAGES, rankers):
        metrics = RankingMetrics([*ks, candidates])
        seconds, users, clock = 0.0, 0, progress.ProgressClock()
        for index, chunk in enumerate(chunks):
            start = time.perf_counter()
            ranked = ranker(chunk)
            if ranked.is_cuda:
                torch.cuda.synchronize()
            seconds += time.perf_counter() - start
            metrics.update_ranked(ranked, chunk, catalogue.num_items)
            users += len(chunk.users)
            if clock.due():
                where = f"{split} split, {stage}: user chunk {index + 1} of {len(chunks)}"
                clock.report(where, index + 1, len(chunks), "its end", users, "users")
        rows.append(_row(stage, metrics, candidates, ks, 1e6 * seconds / max(chunks.num_users, 1)))
    return pd.DataFrame(rows)


def two_stage_ranking(retriever: Recommender, reranker: Recommender, chunk: RankingChunk, candidates: int) -> Tensor:
    """The chunk's users' `candidates` retrieved, then all of them ordered by the re-ranker: [U, min(candidates, num_items)]."""
    items, scores = retrieve(retriever, chunk.users, chunk.exclude_rows, chunk.exclude_items, candidates)
    order = rerank_scores(reranker, chunk.users, items, scores).argsort(dim=1, descending=True)
    return items.gather(1, order)


def _row(stage: str, metrics: RankingMetrics, candidates: int, ks: Sequence[int], ms_per_1000_users: float) -> dict[str, float | str]:
    values = {name: float(value) for name, value in metrics.compute().items()}
    row: dict[str, float | str] = {"stage": stage, f"recall@{candidates}": values[f"recall@{candidates}"]}
    for k in ks:
        row[f"ndcg@{k}"], row[f"recall@{k}"] = values[f"ndcg@{k}"], values[f"recall@{k}"]
    row["ms/1k users"] = ms_per_1000_users
    return row
