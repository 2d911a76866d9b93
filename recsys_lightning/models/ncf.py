"""NeuMF (He et al. 2017, "Neural Collaborative Filtering"): a GMF path and an MLP path, fused linearly."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from recsys_lightning.models.base import Recommender
from recsys_lightning.models.mlp import PairMLP


class NeuMF(Recommender):
    """score(u, i) = h^T [p_u * q_i ; MLP([p'_u; q'_i])] + b, as logits (no sigmoid inside).

    The GMF and MLP paths have their own embeddings. The output layer over the concatenation is
    linear, so it is kept as h_gmf (a vector here) plus the MLP's last Linear: the same function, and
    the GMF term of full ranking becomes one matmul, (p_u * h_gmf) @ Q^T. `zero_init_mlp` starts the
    MLP path at zero, a cheap stand-in for the paper's GMF pre-training.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        gmf_dim: int = 32,
        mlp_dim: int = 32,
        hidden: Sequence[int] = (64, 32, 16),
        dropout: float = 0.0,
        init_std: float = 0.1,
        zero_init_mlp: bool = True,
        sparse_gradients: bool = False,
    ) -> None:
        super().__init__(num_users, num_items, sparse_gradients)
        self.user_gmf = nn.Parameter(torch.randn(num_users, gmf_dim) * init_std)
        self.item_gmf = nn.Parameter(torch.randn(num_items, gmf_dim) * init_std)
        self.user_mlp = nn.Parameter(torch.randn(num_users, mlp_dim) * init_std)
        self.item_mlp = nn.Parameter(torch.randn(num_items, mlp_dim) * init_std)
        self.gmf_output = nn.Parameter(torch.ones(gmf_dim))
        self.mlp = PairMLP(mlp_dim, mlp_dim, hidden, dropout, zero_init_output=zero_init_mlp)

    def score_with_penalty(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        user_gmf, item_gmf = self.rows(self.user_gmf, users), self.rows(self.item_gmf, items)
        user_mlp, item_mlp = self.rows(self.user_mlp, users), self.rows(self.item_mlp, items)
        penalty = sum(v.square().sum() for v in (user_gmf, item_gmf, user_mlp, item_mlp)) / len(users)
        weighted_user = user_gmf * self.gmf_output
        if items.dim() > users.dim():
            weighted_user = weighted_user.unsqueeze(-2)
        return (weighted_user * item_gmf).sum(-1) + self.mlp(user_mlp, item_mlp), penalty

    def score_all(self, users: Tensor) -> Tensor:
        gmf = (self.rows(self.user_gmf, users) * self.gmf_output) @ self.item_gmf.T
        return gmf + self.mlp.score_all(self.rows(self.user_mlp, users), self.item_mlp)

    def score_items(self, users: Tensor, items: Tensor) -> Tensor:
        gmf = (self.rows(self.user_gmf, users) * self.gmf_output) @ self.rows(self.item_gmf, items).T
        return gmf + self.mlp.score_all(self.rows(self.user_mlp, users), self.rows(self.item_mlp, items))

    def embedding_tables(self) -> dict[str, tuple[Tensor, Tensor]]:
        """GMF first: its dot-product geometry is what cosine similarity measures; the MLP
        embeddings only mean something through the MLP."""
        return {"gmf": (self.user_gmf, self.item_gmf), "mlp": (self.user_mlp, self.item_mlp)}

    def row_tables(self) -> list[nn.Parameter]:
        return [self.user_gmf, self.item_gmf, self.user_mlp, self.item_mlp]
