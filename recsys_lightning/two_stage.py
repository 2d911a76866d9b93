"""Two-stage recommendation measured: a retriever's top-N candidates per user re-scored by a second model,
beside each model alone, ranked as the test loop ranks (`evaluate retrieval.run_dir=...`), at one candidate
count or a sweep of them, and each stage's figures over the retriever's.

The stages themselves are in retrieval.py; that the two runs were trained on the same data and split is
checked in runs/other_runs.py before they are compared.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

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
MAX_CANDIDATE_COUNTS = 16  # counts one sweep compares: a table a terminal still shows, not a grid search
GAIN_NAMES = ("ndcg", "recall")  # the metrics whose ratio to the retriever's `gains_over_retriever` shows

# A ranking of one chunk of users and the seconds it took: [U, width] item indices, best first.
Timed = tuple[Tensor, float]


def compare_stages(
    retriever: Recommender,
    reranker: Recommender,
    catalogue: Catalogue,
    candidates: int | Sequence[int],
    ks: Sequence[int],
    split: str = "test",
    chunk_size: int = 1024,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """Each stage alone and the two together, ranked as the test loop ranks (seen parts hidden, every user
    with held-out items): NDCG and recall at each of `ks`, and milliseconds per 1,000 users. Recall at a
    candidate count of the retriever (and of the two-stage ranking, a reordering of the same items) is the
    candidate recall: the share of held-out items the re-ranker gets to see.

    One count (an int): a row per stage, each with its recall@<count>. Several (a sweep, e.g. [50, 100, 200,
    500]): the retriever and the re-ranker alone once, then a two-stage row per count, ascending, with its
    `candidates` and `candidate recall`. The sweep retrieves once, at the largest count, and re-ranks each
    count's prefix of it (a retriever's top 50 is the first 50 of its top 500), so it costs about one retrieval.

    ms/1k users is the ranking alone (no metric): a model alone scores the catalogue and takes its top
    max(K) (with one count, max(count, K)); a two-stage row is that retrieval, whose seconds every count is
    charged in full (a top 50 alone would be slightly cheaper than the top 500 it is cut from), plus
    re-scoring and ordering its own candidates.

    The catalogue records every user's split parts, so no data needs rebuilding; the models are on `device`.
    """
    counts = [candidates] if isinstance(candidates, int) else sorted(set(candidates))
    if not counts or min(counts) < 1:  # evaluate checks retrieval.candidates first; this guards a direct call
        raise ValueError(f"candidates={candidates!r}: give a count >= 1, or a non-empty list of them")
    hidden, heldout_part = PROTOCOL[split]
    heldout = catalogue.seen_in([heldout_part])
    heldout = replace(heldout, values=torch.ones(len(heldout.indices)))  # ratings the chunks carry; no ranking metric reads them
    with progress.building(f"{split} ranking chunks"):
        chunks = RankingChunks(heldout.to(device), catalogue.seen_in(hidden).to(device), chunk_size)
    sweep = not isinstance(candidates, int)
    depth, alone_ks = (max(ks), list(ks)) if sweep else (max(candidates, *ks), [*ks, candidates])
    rows = []
    for stage, model in zip(STAGES, (retriever, reranker)):
        ((metrics, ms),) = _ranking_pass(chunks, catalogue, f"{split} split, {stage}", partial(_ranked_alone, model, depth), [alone_ks])
        rows.append(_row(stage, _candidate_columns(sweep, None if sweep else counts[0], metrics), metrics, ks, ms))
    ranker = partial(_two_stage_rankings, retriever, reranker, counts)
    passes = _ranking_pass(chunks, catalogue, f"{split} split, two-stage", ranker, [[*ks, count] for count in counts])
    for count, (metrics, ms) in zip(counts, passes):
        rows.append(_row("two-stage", _candidate_columns(sweep, count, metrics), metrics, ks, ms))
    return pd.DataFrame(rows)


def gains_over_retriever(table: pd.DataFrame) -> pd.DataFrame:
    """Each row's NDCG and recall at each K (the table's ndcg@K columns) divided by the retriever's (the first
    row): 1.0 for the retriever, above it where a stage ranks better. NaN where the retriever's figure is 0."""
    names = [f"{name}@{column.partition('@')[2]}" for column in table.columns if column.startswith("ndcg@") for name in GAIN_NAMES]
    retriever = table[names].iloc[0].astype(float)
    labels = [column for column in ("stage", "candidates") if column in table.columns]  # the model: the table above names it
    return pd.concat([table[labels], table[names].astype(float).div(retriever.where(retriever != 0))], axis=1)


def _ranked_alone(model: Recommender, depth: int, chunk: RankingChunk) -> list[Timed]:
    items, seconds = _timed(retrieve, model, chunk.users, chunk.exclude_rows, chunk.exclude_items, depth)
    return [(items[0], seconds)]


def _two_stage_rankings(retriever: Recommender, reranker: Recommender, counts: Sequence[int], chunk: RankingChunk) -> list[Timed]:
    """One two-stage ranking per count (ascending), each re-ranking the prefix of one retrieval at the largest."""
    (items, scores), retrieval_seconds = _timed(retrieve, retriever, chunk.users, chunk.exclude_rows, chunk.exclude_items, counts[-1])
    rankings = []
    for count in counts:
        ranked, seconds = _timed(_reranked, reranker, chunk, items[:, :count], scores[:, :count])
        rankings.append((ranked, retrieval_seconds + seconds))
    return rankings


def _reranked(reranker: Recommender, chunk: RankingChunk, items: Tensor, scores: Tensor) -> Tensor:
    order = rerank_scores(reranker, chunk.users, items, scores).argsort(dim=1, descending=True)
    return items.gather(1, order)


def _timed(compute: Callable[..., Any], *arguments: Any) -> tuple[Any, float]:
    """`compute(*arguments)` and its wall seconds, a GPU's queued work included."""
    start = time.perf_counter()
    result = compute(*arguments)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def _ranking_pass(
    chunks: RankingChunks,
    catalogue: Catalogue,
    where: str,
    rank: Callable[[RankingChunk], list[Timed]],
    metric_ks: Sequence[Sequence[int]],
) -> list[tuple[RankingMetrics, float]]:
    """One pass over the user chunks, `rank` giving one or more rankings of each: per ranking, its metrics
    at its `metric_ks` and its milliseconds per 1,000 users."""
    metrics = [RankingMetrics(ks) for ks in metric_ks]
    seconds, users, clock = [0.0] * len(metrics), 0, progress.ProgressClock()
    for index, chunk in enumerate(chunks):
        for position, (ranked, took) in enumerate(rank(chunk)):
            metrics[position].update_ranked(ranked, chunk, catalogue.num_items)
            seconds[position] += took
        users += len(chunk.users)
        if clock.due():
            clock.report(f"{where}: user chunk {index + 1} of {len(chunks)}", index + 1, len(chunks), "its end", users, "users")
    return [(metric, 1e6 * took / max(chunks.num_users, 1)) for metric, took in zip(metrics, seconds)]


def _candidate_columns(sweep: bool, count: int | None, metrics: RankingMetrics) -> dict[str, Any]:
    """With one count, recall@<count> (every row); in a sweep, `candidates` and `candidate recall` ("-" and NaN
    for a model alone, which no count changes)."""
    if not sweep:
        return {f"recall@{count}": float(metrics.compute()[f"recall@{count}"])}
    if count is None:
        return {"candidates": "-", "candidate recall": math.nan}
    return {"candidates": count, "candidate recall": float(metrics.compute()[f"recall@{count}"])}


def _row(stage: str, leading: dict[str, Any], metrics: RankingMetrics, ks: Sequence[int], ms_per_1000_users: float) -> dict[str, Any]:
    """The stage, its `leading` columns (candidate recall), NDCG and recall at each K, and its cost."""
    values = {name: float(value) for name, value in metrics.compute().items()}
    row = {"stage": stage, **leading}
    for k in ks:
        row[f"ndcg@{k}"], row[f"recall@{k}"] = values[f"ndcg@{k}"], values[f"recall@{k}"]
    return {**row, "ms/1k users": ms_per_1000_users}
