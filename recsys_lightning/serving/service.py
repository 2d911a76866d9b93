"""Top-K recommendations, similar items and similar users, from a trained run, by raw id or by index.

Users are answered in chunks: one `score_all` (or one vector-index search) and one `topk` per chunk,
so memory stays at chunk x num_items whatever the number of users.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from recsys_lightning.data.catalogue import PARTS
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.errors import ConfigError, UnknownId, quote
from recsys_lightning.ranking import hits, top_k_unseen
from recsys_lightning.retrieval import rerank_scores
from recsys_lightning.runs.trained_run import TrainedRun
from recsys_lightning.serving.vector_index import ItemVectorIndex

UNKNOWN = -1
ITEM_ITEM = "item-item"  # the `embedding` of neighbours found in a model's item-item matrix (itemknn, ease)


@dataclass(frozen=True)
class Recommendations:
    """Per requested user: `items` and `scores` [B, min(k, max_k)] (score -inf where fewer items were left),
    and `fallback` [B], True where the popularity ranking answered instead of the model. Two stages add
    `retrieval_scores`, the retriever's scores of the same items (`scores` are the re-ranker's)."""

    users: Tensor
    items: Tensor
    scores: Tensor
    fallback: Tensor
    retrieval_scores: Tensor | None = None


@dataclass(frozen=True)
class Neighbours:
    indices: Tensor
    similarities: Tensor
    embedding: str


class RecommendationService:
    """Answers requests against one trained run.

    `exclude` names the split parts whose items a user is never shown again: all of them when serving,
    train and valid to reproduce the test ranking. Users with fewer than `min_history` training
    interactions, and unknown users, get the most popular items they have not seen.
    """

    def __init__(
        self,
        run: TrainedRun,
        exclude: Sequence[str] = PARTS,
        min_history: int = 1,
        chunk_size: int = 1024,
        index: ItemVectorIndex | None = None,
    ) -> None:
        self.run = run
        self.model = run.model
        self.catalogue = run.catalogue
        self.exclude = tuple(exclude)
        self.excluded: UserItemCSR = self.catalogue.seen_in(exclude)
        self.history = self.catalogue.seen_in(["train"]).counts()
        self.min_history = min_history
        self.chunk_size = chunk_size
        self.index = index

    @property
    def ranking(self) -> str:
        """What ranked the answer and what its scores are, for a heading."""
        if self.index is not None:
            return f"{self.run.model_name} searched with {self.index.description}, scores are inner products"
        return f"{self.run.model_name}, scores are the model's"

    @property
    def shown_items(self) -> str:
        """Which items an answer may hold, for a heading: seen ones are left out only for the `exclude` parts."""
        if set(self.exclude) >= set(PARTS):
            return "unseen items"
        if not self.exclude:
            return "items, seen ones included (exclude=[])"
        return f"items not seen in {' or '.join(part for part in PARTS if part in self.exclude)} (exclude=[{','.join(self.exclude)}])"

    @property
    def max_k(self) -> int:
        """The most items one answer can hold: a larger k is answered with this many, never allocated."""
        return self.catalogue.num_items

    def user_indices(self, raw_user_ids: Sequence[Any]) -> Tensor:
        """The catalogue index of each raw user id, UNKNOWN where the run never saw the id."""
        found = [self.catalogue.user_index(raw_id) for raw_id in raw_user_ids]
        indices = [UNKNOWN if index is None else index for index in found]
        return torch.tensor(indices, dtype=torch.long, device=self.catalogue.popularity.device)

    def recommend_for(self, raw_user_ids: Sequence[Any], k: int) -> Recommendations:
        """Top k for raw user ids. An id the run never saw is not an error: it gets the most popular
        items (its `users` entry is UNKNOWN, its `fallback` True), as a new user would."""
        return self.recommend(self.user_indices(raw_user_ids), k)

    def recommend(self, users: Tensor, k: int) -> Recommendations:
        """`users` are indices, UNKNOWN (-1) for ids the run never saw; k is capped at `max_k`."""
        k = min(k, self.max_k)
        known = users >= 0
        fallback = ~known
        fallback[known] = self.history[users[known]] < self.min_history
        device = self.catalogue.popularity.device
        items = torch.zeros(len(users), k, dtype=torch.long, device=device)
        scores = torch.full((len(users), k), -torch.inf, device=device)
        personal = torch.nonzero(~fallback).flatten()
        if len(personal):
            items[personal], scores[personal] = self._top_k(users[personal], k)
        popular = torch.nonzero(fallback).flatten()
        if len(popular):
            items[popular], scores[popular] = self._popular_unseen(users[popular], k)
        return Recommendations(users, items, scores, fallback)

    def recommend_in_chunks(self, users: Tensor, k: int) -> Iterator[Recommendations]:
        for chunk in users.split(self.chunk_size):
            yield self.recommend(chunk, k)

    @torch.no_grad()
    def _top_k(self, users: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The model's own ranking of unseen items, or the vector index's, which matches it for MF."""
        exclude_rows, exclude_items = self.excluded.coordinates(users)
        if self.index is None:
            scores = self.model.score_all(users)
            top = top_k_unseen(scores, exclude_rows, exclude_items, k)
            return top, scores.gather(1, top)
        queries = self.model.query_vectors(users)
        # Over-fetch by the most items any user in the chunk has seen: after dropping them, k remain.
        fetch = min(k + int(self.excluded.counts(users).max()), self.catalogue.num_items)
        candidate_scores, candidates = self.index.search(queries, fetch)
        seen = hits(candidates.clamp(min=0), exclude_rows, exclude_items, self.catalogue.num_items)
        candidate_scores = candidate_scores.masked_fill(seen | (candidates < 0), -torch.inf)
        best_scores, positions = candidate_scores.topk(k, dim=1)
        return candidates.gather(1, positions), best_scores

    def _popular_unseen(self, users: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Training popularity (number of users) as the score; unknown users have seen nothing."""
        scores = self.catalogue.popularity.float().expand(len(users), -1).clone()
        known = torch.nonzero(users >= 0).flatten()
        rows, items = self.excluded.coordinates(users[known])
        top = top_k_unseen(scores, known[rows], items, k)
        return top, scores.gather(1, top)

    def similar_items_to(self, raw_item_id: Any, k: int, embedding: str | None = None) -> Neighbours:
        """The k items nearest to a raw item id; UnknownId when the run never saw it."""
        return self.similar_items(self._known_index("item", raw_item_id), k, embedding)

    def similar_users_to(self, raw_user_id: Any, k: int, embedding: str | None = None) -> Neighbours:
        """The k users nearest to a raw user id; UnknownId when the run never saw it."""
        return self.similar_users(self._known_index("user", raw_user_id), k, embedding)

    def _known_index(self, kind: str, raw_id: Any) -> int:
        catalogue = self.catalogue
        index = catalogue.item_index(raw_id) if kind == "item" else catalogue.user_index(raw_id)
        if index is None:
            ids = catalogue.item_ids if kind == "item" else catalogue.user_ids
            raise UnknownId(
                f"{kind} id {quote(raw_id)} is not in this run's data ({len(ids)} {kind}s, ids such as {quote(ids[0])}, "
                f"{quote(ids[-1])}); similar {kind}s need the id of {'an' if kind == 'item' else 'a'} {kind} the model was trained on"
            )
        return index

    @torch.no_grad()
    def similar_items(self, item: int, k: int, embedding: str | None = None) -> Neighbours:
        """By cosine of item embeddings or, for a model without them, by its item-item weights (the items
        with a positive weight from `item`, so fewer than k when it has fewer neighbours)."""
        if embedding is None and not self.model.embedding_tables():
            weights = self.model.item_similarities(torch.tensor([item], device=self.catalogue.popularity.device))
            if weights is not None:
                found = _nearest(weights[0], item, k, ITEM_ITEM)
                positive = found.similarities > 0
                return Neighbours(found.indices[positive], found.similarities[positive], ITEM_ITEM)
        name, (_, items) = self._table(embedding, "items")
        return _cosine_neighbours(items, item, k, name)

    @torch.no_grad()
    def similar_users(self, user: int, k: int, embedding: str | None = None) -> Neighbours:
        name, (users, _) = self._table(embedding, "users")
        return _cosine_neighbours(users, user, k, name)

    def _table(self, embedding: str | None, kind: str) -> tuple[str, tuple[Tensor, Tensor]]:
        tables = self.model.embedding_tables()
        if not tables:
            others = "mf, ncf, hybrid, itemknn or ease" if kind == "items" else "mf, ncf or hybrid"
            raise ConfigError(f"{self.run.model_name} has no {kind[:-1]} embeddings to find similar {kind} by; train one of {others}")
        name = embedding or next(iter(tables))
        if name not in tables:
            raise ConfigError(f"embedding={name!r}: {self.run.model_name} has {', '.join(tables)}")
        return name, tables[name]


class TwoStageService(RecommendationService):
    """Recommends in two stages: `retrieval` (a service of the retriever run, exact or FAISS) proposes each
    user's `candidates` best unseen items, and this run's model scores those and nothing else.

    Both runs share one catalogue (the caller checks it), so they agree on seen items and on who falls
    back to popularity: a fallback user keeps the retriever's popular items, as one stage would give.
    """

    def __init__(
        self,
        run: TrainedRun,
        retrieval: RecommendationService,
        candidates: int,
        exclude: Sequence[str] = PARTS,
        min_history: int = 1,
        chunk_size: int = 1024,
    ) -> None:
        super().__init__(run, exclude, min_history, chunk_size)
        self.retrieval = retrieval
        self.candidates = min(candidates, self.catalogue.num_items)

    @property
    def max_k(self) -> int:
        """Only the candidates are scored, so an answer holds at most that many."""
        return self.candidates

    @property
    def ranking(self) -> str:
        retriever = self.retrieval.run.model_name
        return (
            f"{self.run.model_name} re-ranking the top {self.candidates} of {retriever}; "
            f"score is {self.run.model_name}'s, retrieval_score {retriever}'s"
        )

    def recommend(self, users: Tensor, k: int) -> Recommendations:
        k = min(k, self.max_k)
        proposed = self.retrieval.recommend(users, self.candidates)
        scores = proposed.scores.clone()
        personal = torch.nonzero(~proposed.fallback).flatten()
        if len(personal):
            scores[personal] = rerank_scores(self.model, users[personal], proposed.items[personal], proposed.scores[personal])
        best_scores, positions = scores.topk(k, dim=1)
        items, retrieval_scores = proposed.items.gather(1, positions), proposed.scores.gather(1, positions)
        return Recommendations(users, items, best_scores, proposed.fallback, retrieval_scores)


def _cosine_neighbours(table: Tensor, row: int, k: int, name: str) -> Neighbours:
    normalised = F.normalize(table, dim=1)
    return _nearest(normalised @ normalised[row], row, k, name)


def _nearest(similarities: Tensor, row: int, k: int, name: str) -> Neighbours:
    similarities = similarities.clone()
    similarities[row] = -torch.inf  # never one's own neighbour
    best = similarities.topk(min(k, len(similarities) - 1))
    return Neighbours(best.indices, best.values, name)
