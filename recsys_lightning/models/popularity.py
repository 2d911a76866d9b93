"""Most popular items: the same ranking for every user, the floor any personal model must clear."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from recsys_lightning.models.closed_form import ClosedFormRecommender
from recsys_lightning.ranges import FLAG


class Popularity(ClosedFormRecommender):
    """score(u, i) = the number of training users of item i.

    An inner product with a constant query, [1] . [count_i], so a vector index can serve it too.
    """

    def __init__(self, num_users: int, num_items: int, sparse_gradients: Annotated[bool, FLAG] = False) -> None:
        super().__init__(num_users, num_items, sparse_gradients)
        self.register_buffer("item_popularity", torch.zeros(num_items))

    def fit(self, interactions: Tensor) -> None:
        self.item_popularity = torch.sparse.sum(interactions.float(), 0).to_dense()

    def score_all(self, users: Tensor) -> Tensor:
        return self.query_vectors(users) @ self.item_vectors().T

    def query_vectors(self, users: Tensor) -> Tensor:
        return self.item_popularity.new_ones(len(users), 1)

    def item_vectors(self) -> Tensor:
        return self.item_popularity.unsqueeze(1)
