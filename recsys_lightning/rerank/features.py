"""What a re-ranker sees of each (user, candidate): the retriever's score and rank, popularity and
activity, genre and year against the user's history, and a second model's (EASE's) score. Every feature
is computed from one history, the training rows the scoring retriever was trained on, a chunk of users
at a time, as whole-tensor operations.

The set is bench/bench_reranker.py's `8 + EASE`: the only one of those tried that passes 1.02x the
retriever on ML-100K validation and test (bench/RESULTS.md, issue 26 item 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from recsys_lightning.data.features import FeatureTable
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.errors import ConfigError
from recsys_lightning.models.ease import EASE

# Each feature's meaning; model.features names a list of them (the ranker's inputs, in that order).
FEATURES = {
    "retriever_z": "the retriever's score, z-scored within the user's candidates",
    "retriever_gap": "the retriever's score minus the user's top candidate's",
    "log_rank": "log(1 + the candidate's rank in the retriever's list, from 0)",
    "log_popularity": "log(1 + the item's training users), standardized over the items",
    "log_activity": "log(1 + the user's training items), standardized over the users",
    "genre_affinity": "the user's genre shares (of their training items) summed over the item's genres, over its genre count",
    "year": "the item's release year, standardized (0 where unknown)",
    "year_distance": "|the item's standardized year - the mean over the user's training items|",
    "ease_z": "EASE's score (Steck 2019, fitted on the history), z-scored within the user's candidates",
}
# The item features (data.item_features) a feature needs.
NEEDS = {"genre_affinity": "genre", "year": "year", "year_distance": "year"}


def check_feature_names(names: Sequence[str], item_features: FeatureTable | None) -> None:
    """One line for a feature name that does not exist, or whose item features the data was not asked for."""
    unknown = [name for name in names if name not in FEATURES]
    if unknown:
        raise ConfigError(f"model.features: {unknown[0]!r} is no re-ranker feature; use some of {', '.join(FEATURES)}")
    for name in names:
        column = NEEDS.get(name)
        if column and not _columns(item_features, column):
            raise ConfigError(
                f"model.features names {name}, which needs the items' {column}: add {column} to data.item_features (ML-100K: [genre,year])"
            )


@dataclass(frozen=True)
class ItemSide:
    """Dense side features of every item: genre flags [I, G] and standardized release year [I] (0 where unknown)."""

    genres: Tensor
    year: Tensor

    @classmethod
    def from_table(cls, table: FeatureTable | None, num_items: int) -> ItemSide:
        """From the data's item feature table: `genre=...` columns as flags, `year=1995` columns as the year
        (a year that is not a number, as ML-100K's two odd titles have, counts as unknown)."""
        if table is None:
            return cls(torch.zeros(num_items, 0), torch.zeros(num_items))
        rows = torch.repeat_interleave(torch.arange(table.num_entities), torch.diff(table.indptr))
        genre_columns = _columns(table, "genre")
        position = torch.full((table.num_features,), -1, dtype=torch.long)
        position[genre_columns] = torch.arange(len(genre_columns))
        genres = torch.zeros(num_items, len(genre_columns))
        is_genre = position[table.indices] >= 0
        genres[rows[is_genre], position[table.indices[is_genre]]] = 1.0
        years = torch.full((table.num_features,), torch.nan)
        for column in _columns(table, "year"):
            value = table.names[column].split("=", 1)[1]
            if value.isdigit():
                years[column] = float(value)
        year = torch.full((num_items,), torch.nan)
        has = ~torch.isnan(years[table.indices])
        year[rows[has]] = years[table.indices[has]]
        known = ~torch.isnan(year)
        if known.sum() > 1:
            year = (year - year[known].mean()) / year[known].std().clamp(min=1e-6)
        return cls(genres, torch.where(known, year, torch.zeros_like(year)))


class CandidateFeatures:
    """The named features of (user, candidate) pairs from one history (a UserItemCSR of training rows):
    per-user and per-item statistics and EASE are computed once here, each chunk of candidates then costs
    a few gathers and one [U, I] EASE product."""

    def __init__(self, names: Sequence[str], history: UserItemCSR, items: ItemSide, ease_l2: float) -> None:
        self.names = list(names)
        matrix = history.binary_matrix()  # sparse [U, I]
        popularity = history.counts_per_item().float()
        activity = history.counts().float()
        self.log_popularity = _standardized(torch.log1p(popularity))
        self.log_activity = _standardized(torch.log1p(activity))
        self.items = items
        profile = torch.sparse.mm(matrix, items.genres) if items.genres.shape[1] else torch.zeros(history.num_users, 0)
        self.genre_profile = profile / profile.sum(1, keepdim=True).clamp(min=1)
        self.mean_year = torch.sparse.mm(matrix, items.year[:, None]).squeeze(1) / activity.clamp(min=1)
        self.ease: EASE | None = None
        if "ease_z" in self.names:
            self.ease = EASE(history.num_users, history.num_items, l2=ease_l2)
            self.ease.fit(matrix)

    def __call__(self, users: Tensor, items: Tensor, scores: Tensor) -> Tensor:
        """Features [U, N, len(names)] of candidates `items` [U, N] with the retriever's `scores` [U, N], best
        first; a -inf score (a list padded past the user's unseen items) is read as the row's lowest."""
        finite = torch.isfinite(scores)
        lowest = torch.where(finite, scores, torch.inf).min(1, keepdim=True).values
        scores = torch.where(finite, scores, lowest)
        return torch.stack([getattr(self, f"_{name}")(users, items, scores) for name in self.names], dim=-1)

    def _retriever_z(self, users: Tensor, items: Tensor, scores: Tensor) -> Tensor:
        return within_user_z(scores)

    def _retriever_gap(self, users: Tensor, items: Tensor, scores: Tensor) -> Tensor:
        return scores - scores[:, :1]

    def _log_rank(self, users: Tensor, items: Tensor, scores: Tensor) -> Tensor:
        return torch.log1p(torch.arange(items.shape[1], dtype=torch.float32)).expand(items.shape)

    def _log_popularity(self, users: Tensor, items: Tensor, scores: Tensor) -> Tensor:
        return self.log_popularity[items]

    def _log_activity(self, users: Tensor, items: Tensor, scores: Tensor) -> Tensor:
        return self.log_activity[users, None].expand(items.shape)

    def _genre_affinity(self, users: Tensor, items: Tensor, scores: Tensor) -> Tensor:
        genres = self.items.genres[items]  # [U, N, G]
        return (genres * self.genre_profile[users, None, :]).sum(-1) / genres.sum(-1).clamp(min=1)

    def _year(self, users: Tensor, items: Tensor, scores: Tensor) -> Tensor:
        return self.items.year[items]

    def _year_distance(self, users: Tensor, items: Tensor, scores: Tensor) -> Tensor:
        return (self.items.year[items] - self.mean_year[users, None]).abs()

    def _ease_z(self, users: Tensor, items: Tensor, scores: Tensor) -> Tensor:
        return within_user_z(self.ease.score_all(users).gather(1, items))


def within_user_z(values: Tensor) -> Tensor:
    """Each row z-scored (mean 0, standard deviation 1 with Bessel's correction; a constant row gives 0)."""
    return (values - values.mean(1, keepdim=True)) / values.std(1, keepdim=True).clamp(min=1e-6)


def _standardized(values: Tensor) -> Tensor:
    return (values - values.mean()) / values.std().clamp(min=1e-6)


def _columns(table: FeatureTable | None, column: str) -> list[int]:
    """Feature ids of `column=...` in the table."""
    if table is None:
        return []
    return [index for index, name in enumerate(table.names) if name.startswith(f"{column}=")]
