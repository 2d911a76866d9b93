"""Synthetic interactions at any scale, with power-law popularity and a planted low-rank preference.

Each item belongs to one of `num_clusters` taste clusters and has a Zipf popularity weight; each user
has a home cluster. An interaction is, with probability `affinity`, an item of the user's home
cluster drawn by popularity, else any item drawn by popularity. The user x item preference is thus
rank `num_clusters` plus popularity: a model can learn it, and a popularity ranking cannot.
Everything is drawn in chunks by inverse-CDF lookups; nothing is users x items.
"""

from __future__ import annotations

import logging
from typing import Annotated

import numpy as np
import pandas as pd

from recsys_lightning import progress
from recsys_lightning.data.datamodule import InteractionDataModule, LoadedInteractions
from recsys_lightning.data.interactions import ITEM, RATING, TIMESTAMP, USER
from recsys_lightning.errors import ConfigError
from recsys_lightning.ranges import MAX_COUNT, Range
from recsys_lightning.seeds import stream_seed

log = logging.getLogger(__name__)


def generate_interactions(
    num_users: int,
    num_items: int,
    num_interactions: int,
    num_clusters: int = 16,
    popularity_exponent: float = 0.6,
    user_activity_exponent: float = 0.5,
    affinity: float = 0.8,
    seed: int = 0,
    chunk_size: int = 2_000_000,
) -> pd.DataFrame:
    """`num_interactions` distinct (user_id, item_id) rows, rating 1, timestamp = draw order."""
    if (
        min(num_users, num_items, num_interactions, num_clusters) < 1
        or not 0 <= affinity <= 1
        or num_interactions > num_users * num_items // 2
    ):
        raise ConfigError(
            "data.num_users, num_items, num_interactions and num_clusters must be >= 1, affinity in [0, 1], "
            "and num_interactions at most half of num_users x num_items"
        )
    rng = np.random.default_rng(stream_seed(seed, "synthetic"))
    item_cluster = rng.integers(0, num_clusters, num_items)
    item_weight = (rng.permutation(num_items) + 1.0) ** -popularity_exponent
    by_cluster = np.argsort(item_cluster, kind="stable")  # items grouped by cluster
    cumulative = np.cumsum(item_weight[by_cluster])
    cluster_end = np.searchsorted(item_cluster[by_cluster], np.arange(num_clusters), side="right")
    cluster_start = np.concatenate([[0], cluster_end[:-1]])
    mass_before = np.concatenate([[0.0], cumulative])[cluster_start]
    cluster_mass = np.concatenate([[0.0], cumulative])[cluster_end] - mass_before
    user_cluster = rng.integers(0, num_clusters, num_users)
    user_cdf = np.cumsum((rng.permutation(num_users) + 1.0) ** -user_activity_exponent)

    def draw(count: int) -> np.ndarray:
        """`count` (user, item) draws as keys user * num_items + item, in chunks."""
        keys = []
        for start in range(0, count, chunk_size):
            size = min(chunk_size, count - start)
            chunk_users = np.searchsorted(user_cdf, rng.random(size) * user_cdf[-1], side="right")
            home = user_cluster[chunk_users]
            from_home = rng.random(size) < affinity
            # A point in the cumulative weight: inside the home cluster's span, or anywhere.
            point = np.where(from_home, mass_before[home] + rng.random(size) * cluster_mass[home], rng.random(size) * cumulative[-1])
            positions = np.minimum(np.searchsorted(cumulative, point, side="right"), num_items - 1)
            keys.append(chunk_users.astype(np.int64) * num_items + by_cluster[positions])
            progress.advance(start + size)
        return np.concatenate(keys)

    # Popular items repeat for the same user, so draw in rounds until there are enough distinct pairs,
    # keeping each pair's first draw in draw order.
    keys = np.zeros(0, dtype=np.int64)
    for attempt in range(20):
        missing = num_interactions - len(keys)
        if missing <= 0:
            break
        count = int(missing * 1.2) + 1000
        progress.stage(f"drawing synthetic interactions, round {attempt + 1}", count)
        keys = np.concatenate([keys, draw(count)])
        progress.stage("dropping repeated draws", len(keys))
        _, first = np.unique(keys, return_index=True)
        keys = keys[np.sort(first)]
    if len(keys) < num_interactions:
        raise ConfigError(f"data.num_interactions={num_interactions:,} distinct pairs could not be drawn; lower it or raise num_items")
    keys = keys[:num_interactions]
    users, items = keys // num_items, keys % num_items
    return pd.DataFrame(
        {USER: users, ITEM: items, RATING: np.ones(len(users), np.float32), TIMESTAMP: np.arange(len(users), dtype=np.float64)}
    )


class SyntheticDataModule(InteractionDataModule):
    """Reproducible synthetic data of any size; see `generate_interactions`."""

    def __init__(
        self,
        num_users: Annotated[int, Range(1, MAX_COUNT)] = 2000,
        num_items: Annotated[int, Range(1, MAX_COUNT)] = 1000,
        num_interactions: Annotated[int, Range(1, MAX_COUNT)] = 100_000,
        num_clusters: Annotated[int, Range(1)] = 16,
        popularity_exponent: Annotated[float, Range()] = 0.6,
        user_activity_exponent: Annotated[float, Range()] = 0.5,
        affinity: Annotated[float, Range(0, 1)] = 0.8,
        **split_and_batching,
    ) -> None:
        super().__init__(**split_and_batching)
        self.generator_options = dict(
            num_users=num_users,
            num_items=num_items,
            num_interactions=num_interactions,
            num_clusters=num_clusters,
            popularity_exponent=popularity_exponent,
            user_activity_exponent=user_activity_exponent,
            affinity=affinity,
        )

    def load(self) -> LoadedInteractions:
        frame = generate_interactions(**self.generator_options, seed=self.seed)
        options = self.generator_options
        source = f"synthetic:{options['num_users']}x{options['num_items']}x{options['num_interactions']}"
        items = pd.DataFrame({ITEM: pd.Series([], dtype=np.int64), "title": []})
        unrated = "synthetic data has no ratings (every interaction is rated 1): use data=movielens or data=csv"
        return LoadedInteractions(frame, items, source=source, ratings_missing=unrated)
