"""Popularity within the features a user prefers: the content baseline a feature-aware model must beat on new items."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from recsys_lightning.errors import ConfigError
from recsys_lightning.models.closed_form import ClosedFormRecommender
from recsys_lightning.ranges import FLAG, MAX_COUNT, Range


class FeaturePopularity(ClosedFormRecommender):
    """score(u, i) = sum over item i's features f of the share of user u's training items that have f;
    ties broken by the number of training users of i.

    With data.item_features=[genre] this is a user's genre affinity (the share of their training
    interactions in each genre) dotted with the item's genres: what a catalogue owner would rank new items
    by, since a new item's popularity is 0 and its genres are all it has. A user with no training item
    gets plain popularity.

    One inner product, so a vector index can serve it: query [c_u, 1] / n_u, item [g_i, (p_i + r_i) / (max p + 1)],
    with c_u the user's count of training items per feature, n_u their training items, g_i the item's
    0/1 features, p_i its popularity and r_i in [0, 1) drawn once from seed 0. The integer match count
    c_u . g_i decides and the popularity term, below 1, only orders its ties (exact in float32 while
    matches x (max p + 1) < 2^24). r_i orders what popularity leaves tied, new items above all (each 0):
    without it `topk` would keep them in index order, which on MovieLens (ids by release) is no neutral order.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        features: Annotated[bool, FLAG] = True,
        num_user_features: Annotated[int, Range(0, MAX_COUNT)] = 0,
        num_item_features: Annotated[int, Range(0, MAX_COUNT)] = 0,
        sparse_gradients: Annotated[bool, FLAG] = False,
    ) -> None:
        super().__init__(num_users, num_items, sparse_gradients)
        # Buffers, so a checkpoint ranks without the data: the item features and what `fit` counts.
        self.register_buffer("item_features", torch.zeros(num_items, num_item_features))
        self.register_buffer("item_popularity", torch.zeros(num_items))
        self.register_buffer("item_tiebreak", torch.rand(num_items, generator=torch.Generator().manual_seed(0)))
        self.register_buffer("user_queries", torch.zeros(num_users, num_item_features + 1))

    def set_features(self, item_features: Tensor | None, user_features: Tensor | None, item_counts: Tensor, user_counts: Tensor) -> None:
        """The data's item features (a sparse row-mean matrix) as 0/1 rows; without them there is nothing to rank by."""
        if item_features is None:
            raise ConfigError(
                "model=feature_popularity ranks items by their features, and the data has none: "
                "set data.item_features (ML-100K: [genre]) and keep model.features=true"
            )
        if item_features.shape != self.item_features.shape:
            shape = tuple(self.item_features.shape)
            raise ValueError(f"item features are {item_features.shape[0]} x {item_features.shape[1]}, the model was built for {shape}")
        self.item_features = (item_features.to_dense() > 0).float().to(self.item_features.device)

    def fit(self, interactions: Tensor) -> None:
        interactions = interactions.coalesce().float()
        self.item_popularity = torch.sparse.sum(interactions, 0).to_dense()
        user_items = torch.sparse.sum(interactions, 1).to_dense().clamp(min=1)
        feature_counts = torch.sparse.mm(interactions, self.item_features)
        ones = feature_counts.new_ones(len(feature_counts), 1)
        self.user_queries = torch.cat([feature_counts, ones], 1) / user_items.unsqueeze(1)

    def score_all(self, users: Tensor) -> Tensor:
        return self.query_vectors(users) @ self.item_vectors().T

    def query_vectors(self, users: Tensor) -> Tensor:
        return self.user_queries.index_select(0, users)

    def item_vectors(self) -> Tensor:
        order = (self.item_popularity + self.item_tiebreak) / (self.item_popularity.max() + 1)
        return torch.cat([self.item_features, order.unsqueeze(1)], 1)
