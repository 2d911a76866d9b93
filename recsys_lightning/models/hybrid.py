"""Dot product plus an MLP over the same embeddings: linear taste plus non-linear interactions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated

import torch
from torch import Tensor, nn

from recsys_lightning.models.base import Recommender
from recsys_lightning.models.features import FeatureEmbedding, SideFeatures
from recsys_lightning.models.mlp import PairMLP
from recsys_lightning.ranges import FLAG, MAX_COUNT, MAX_WIDTH, POSITIVE, ListOf, Range, integer


class HybridMF(SideFeatures, Recommender):
    """score(u, i) = <p_u, q_i> + MLP([p_u; q_i]), with p and q shared by both terms.

    With `features`, p and q add the mean of the entity's feature embeddings, as in MatrixFactorization.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: Annotated[int, Range(1, MAX_WIDTH)] = 64,
        hidden: Annotated[Sequence[int], ListOf(integer(1, MAX_WIDTH), 1, "[64,32]")] = (64, 32),
        dropout: Annotated[float, Range(0, 1, open_high=True)] = 0.0,
        init_std: Annotated[float, POSITIVE] = 0.1,
        zero_init_mlp: Annotated[bool, FLAG] = True,
        features: Annotated[bool, FLAG] = False,
        id_dropout: Annotated[float, Range(0, 1, open_high=True)] = 0.0,
        num_user_features: Annotated[int, Range(0, MAX_COUNT)] = 0,
        num_item_features: Annotated[int, Range(0, MAX_COUNT)] = 0,
        sparse_gradients: Annotated[bool, FLAG] = False,
    ) -> None:
        super().__init__(num_users, num_items, sparse_gradients)
        self.user_factors = nn.Parameter(torch.randn(num_users, dim) * init_std)
        self.item_factors = nn.Parameter(torch.randn(num_items, dim) * init_std)
        self.mlp = PairMLP(dim, dim, hidden, dropout, zero_init_output=zero_init_mlp)
        sizes = (num_user_features, num_item_features) if features else None
        self.init_side_features(num_users, num_items, sizes, dim=dim, init_std=init_std, id_dropout=id_dropout, bias=False)

    def score_with_penalty(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        user_vectors = self._vectors(users, self.user_factors, self.user_features)
        item_vectors = self._vectors(items, self.item_factors, self.item_features)
        penalty = (user_vectors.square().sum() + item_vectors.square().sum()) / len(users)
        broadcast_users = user_vectors.unsqueeze(-2) if items.dim() > users.dim() else user_vectors
        scores = (broadcast_users * item_vectors).sum(-1) + self.mlp(user_vectors, item_vectors)
        return scores, penalty

    def score_all(self, users: Tensor) -> Tensor:
        items = (
            self.item_factors
            if self.item_features is None
            else self._vectors(torch.arange(self.num_items, device=self.item_factors.device), self.item_factors, self.item_features)
        )
        return self._score_matrix(self._vectors(users, self.user_factors, self.user_features), items)

    def score_items(self, users: Tensor, items: Tensor) -> Tensor:
        user_vectors = self._vectors(users, self.user_factors, self.user_features)
        return self._score_matrix(user_vectors, self._vectors(items, self.item_factors, self.item_features))

    def _vectors(self, index: Tensor, factors: Tensor, features: FeatureEmbedding | None) -> Tensor:
        return self._with_features(index, self.rows(factors, index), features)

    @staticmethod
    def _with_features(index: Tensor, vectors: Tensor, features: FeatureEmbedding | None) -> Tensor:
        """The id rows `vectors` of `index`, plus their features' mean when on (a cold entity's id row left out)."""
        return vectors if features is None else features.id_mask(index) * vectors + features.rows(index)

    def _score_matrix(self, user_vectors: Tensor, item_vectors: Tensor) -> Tensor:
        return user_vectors @ item_vectors.T + self.mlp.score_all(user_vectors, item_vectors)

    def item_table_names(self) -> list[str]:
        return ["item_factors"]

    def ranking_item_rows(self, tables: Mapping[str, Tensor], items: Tensor) -> Tensor:
        return self._with_features(items, tables["item_factors"], self.item_features)

    def ranking_queries(self, users: Tensor) -> Tensor:
        return self._vectors(users, self.user_factors, self.user_features)

    def score_item_rows(self, queries: Tensor, item_rows: Tensor) -> Tensor:
        return self._score_matrix(queries, item_rows)

    def embedding_tables(self) -> dict[str, tuple[Tensor, Tensor]]:
        return {"factors": (self.user_factors, self.item_factors)}

    def row_tables(self) -> list[nn.Parameter]:
        return [self.user_factors, self.item_factors]
