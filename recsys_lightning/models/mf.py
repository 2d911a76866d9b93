"""Matrix factorisation with optional user and item biases."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from recsys_lightning.models.base import Recommender


class MatrixFactorization(Recommender):
    """score(u, i) = <p_u, q_i> + b_u + b_i.

    Biases are one-column tables ([n, 1]) so they are gathered like embeddings, sparse gradients included.
    """

    def __init__(
        self, num_users: int, num_items: int, dim: int = 64, bias: bool = True, init_std: float = 0.1, sparse_gradients: bool = False
    ) -> None:
        super().__init__(num_users, num_items, sparse_gradients)
        self.user_factors = nn.Parameter(torch.randn(num_users, dim) * init_std)
        self.item_factors = nn.Parameter(torch.randn(num_items, dim) * init_std)
        self.user_bias = nn.Parameter(torch.zeros(num_users, 1)) if bias else None
        self.item_bias = nn.Parameter(torch.zeros(num_items, 1)) if bias else None

    def score_with_penalty(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        user_vectors = self.rows(self.user_factors, users)
        item_vectors = self.rows(self.item_factors, items)
        penalty = user_vectors.square().sum() + item_vectors.square().sum()
        if items.dim() > users.dim():
            user_vectors = user_vectors.unsqueeze(-2)  # one user row against N items
        scores = (user_vectors * item_vectors).sum(-1)
        if self.item_bias is not None:
            user_bias, item_bias = self.rows(self.user_bias, users).squeeze(-1), self.rows(self.item_bias, items).squeeze(-1)
            scores = scores + item_bias + (user_bias.unsqueeze(-1) if items.dim() > users.dim() else user_bias)
            penalty = penalty + user_bias.square().sum() + item_bias.square().sum()
        return scores, penalty / len(users)

    def score_all(self, users: Tensor) -> Tensor:
        return self.query_vectors(users) @ self.item_vectors().T

    # [p_u, b_u, 1] . [q_i, 1, b_i] = <p_u, q_i> + b_u + b_i: the biases ride in the one GEMM (instead of
    # two more passes over a [B, num_items] result), and in a vector index.
    def query_vectors(self, users: Tensor) -> Tensor:
        user_vectors = self.rows(self.user_factors, users)
        if self.user_bias is None:
            return user_vectors
        return torch.cat([user_vectors, self.rows(self.user_bias, users), torch.ones_like(user_vectors[:, :1])], 1)

    def item_vectors(self) -> Tensor:
        if self.item_bias is None:
            return self.item_factors
        return torch.cat([self.item_factors, torch.ones_like(self.item_bias), self.item_bias], 1)

    def embedding_tables(self) -> dict[str, tuple[Tensor, Tensor]]:
        return {"factors": (self.user_factors, self.item_factors)}

    def row_tables(self) -> list[nn.Parameter]:
        return [table for table in (self.user_factors, self.item_factors, self.user_bias, self.item_bias) if table is not None]
