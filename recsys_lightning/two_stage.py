"""Two-stage recommendation: a retriever's top-N candidates per user, re-scored by a second model.

Both stages are whole-chunk tensor operations, shared by training (`sampler=retrieved` draws a
re-ranker's negatives from its user's candidates), `evaluate` and `recommend`. The two runs must be
trained on the same data and split: a retriever of another split has trained on the re-ranker's
validation or test interactions, and would carry them into its figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from recsys_lightning.data.batches import RankingChunk, RankingChunks
from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.data.positives import TrainingPositives
from recsys_lightning.errors import ConfigError
from recsys_lightning.metrics import RankingMetrics
from recsys_lightning.models.base import Recommender
from recsys_lightning.pretrained import check_same_split
from recsys_lightning.ranking import top_k_unseen
from recsys_lightning.runs.checkpoint_file import find_checkpoint

MAX_SCORES = 2**27  # scores held at once when every user's candidates are retrieved (data.eval_max_scores' default)
# Per split evaluated: the parts hidden from the ranking and the part whose items are to be found.
PROTOCOL = {"test": (("train", "valid"), "test"), "valid": (("train",), "valid")}
STAGES = ("retriever", "re-ranker", "two-stage")


@torch.no_grad()
def retrieve(model: Recommender, users: Tensor, exclude_rows: Tensor, exclude_items: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The model's `n` best items for `users` [U] (at most the catalogue), best first, and their scores,
    both [U, min(n, num_items)]. Excluded items, given as (row, item) coordinates, score -inf: they only
    fill the tail of a user with fewer than n other items."""
    scores = model.score_all(users)
    top = top_k_unseen(scores, exclude_rows, exclude_items, n)
    return top, scores.gather(1, top)


def retrieve_for_every_user(model: Recommender, positives: TrainingPositives, n: int) -> tuple[Tensor, Tensor]:
    """`retrieve` for all users with their training positives excluded, a chunk of users at a time so
    that at most MAX_SCORES scores are held: (items, scores), [num_users, min(n, num_items)]."""
    users = torch.arange(positives.num_users, device=positives.device)
    chunks = [retrieve(model, chunk, *positives.coordinates(chunk), n) for chunk in users.split(max(1, MAX_SCORES // positives.num_items))]
    return torch.cat([items for items, _ in chunks]), torch.cat([scores for _, scores in chunks])


@torch.no_grad()
def rerank_scores(model: Recommender, users: Tensor, candidates: Tensor, candidate_scores: Tensor) -> Tensor:
    """The re-ranker's scores [U, N] of each user's `candidates` [U, N], one `score` call for the chunk;
    -inf where the retriever had no candidate (`candidate_scores` -inf: an excluded item padding the list)."""
    return model.score(users, candidates).masked_fill(candidate_scores == -torch.inf, -torch.inf)


def find_retriever(run_dir: str | Path, key: str) -> Path:
    """The best checkpoint of the retriever run `key` names; a missing one is one line naming `key`."""
    try:
        return find_checkpoint(run_dir, "best")
    except ConfigError as error:
        raise ConfigError(f"{key}: {error}") from None


def check_same_data(retriever: Catalogue, reranker: Catalogue, retriever_dir: str | Path, reranker_dir: str | Path) -> None:
    """One line naming both run folders unless they were trained on the same data and split."""
    try:
        check_same_split(retriever, reranker, Path(retriever_dir))
    except ConfigError:
        raise ConfigError(
            f"retrieval.run_dir={retriever_dir} was trained on other data or another split than run_dir={reranker_dir} "
            "(other ids or training pairs), so its candidates may hold the re-ranker's test items; "
            "retrieve with a run trained on the same data, split and seed"
        ) from None


def check_trained_on(catalogue: Catalogue, positives: TrainingPositives, retriever_dir: str | Path) -> None:
    """For `sampler=retrieved`: the retriever must have the training pairs this run trains on (the
    training data lends its positives only, so these and the catalogue sizes are what is compared)."""
    trained = catalogue.seen_in(["train"])
    csr = positives.csr.to("cpu")
    same = (catalogue.num_users, catalogue.num_items) == (positives.num_users, positives.num_items) and (
        torch.equal(trained.indptr.long(), csr.indptr.long()) and torch.equal(trained.indices.long(), csr.indices.long())
    )
    if not same:
        raise ConfigError(
            f"sampler.run_dir={retriever_dir}: trained on other data or another split than this run "
            f"({catalogue.num_users:,} users x {catalogue.num_items:,} items, this run {positives.num_users:,} x "
            f"{positives.num_items:,}, or other training pairs); train the retriever with the same data, split and seed"
        )


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
        seconds = 0.0
        for chunk in chunks:
            start = time.perf_counter()
            ranked = ranker(chunk)
            if ranked.is_cuda:
                torch.cuda.synchronize()
            seconds += time.perf_counter() - start
            metrics.update_ranked(ranked, chunk, catalogue.num_items)
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
