"""NeuMF (He et al. 2017, "Neural Collaborative Filtering"): a GMF path and an MLP path, fused linearly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated

import torch
from torch import Tensor, nn

from recsys_lightning.models.base import Recommender
from recsys_lightning.models.mlp import PairMLP
from recsys_lightning.ranges import FLAG, MAX_WIDTH, POSITIVE, Choice, ListOf, Range, integer

PATHS = ("gmf", "mlp")


class NeuMF(Recommender):
    """score(u, i) = h^T [p_u * q_i ; MLP([p'_u; q'_i])] + b, as logits (no sigmoid inside).

    The GMF and MLP paths have their own embeddings. The output layer over the concatenation is
    linear, so it is kept as h_gmf (a vector here) plus the MLP's last Linear: the same function, and
    the GMF term of full ranking becomes one matmul, (p_u * h_gmf) @ Q^T.

    `paths` builds one path alone: the paper's GMF and MLP models, which are pre-trained separately
    and then loaded into a NeuMF (`pretrained_from`). Once both are loaded, the output layer is
    [alpha h_gmf; (1 - alpha) h_mlp] as in the paper (`pretrained_alpha`). `zero_init_mlp` starts the MLP
    path at zero, a cheap stand-in for that pre-training.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        gmf_dim: Annotated[int, Range(1, MAX_WIDTH)] = 32,
        mlp_dim: Annotated[int, Range(1, MAX_WIDTH)] = 32,
        hidden: Annotated[Sequence[int], ListOf(integer(1, MAX_WIDTH), 1, "[64,32]")] = (64, 32, 16),
        dropout: Annotated[float, Range(0, 1, open_high=True)] = 0.0,
        init_std: Annotated[float, POSITIVE] = 0.1,
        zero_init_mlp: Annotated[bool, FLAG] = True,
        paths: Annotated[Sequence[str], ListOf(Choice(PATHS), 1, "[gmf,mlp]")] = PATHS,
        pretrained_alpha: Annotated[float, Range(0, 1)] = 0.5,
        sparse_gradients: Annotated[bool, FLAG] = False,
    ) -> None:
        super().__init__(num_users, num_items, sparse_gradients)
        self.pretrained_alpha = pretrained_alpha
        self.gmf = "gmf" in paths
        self.user_gmf = nn.Parameter(torch.randn(num_users, gmf_dim) * init_std) if self.gmf else None
        self.item_gmf = nn.Parameter(torch.randn(num_items, gmf_dim) * init_std) if self.gmf else None
        self.gmf_output = nn.Parameter(torch.ones(gmf_dim)) if self.gmf else None
        self.mlp: PairMLP | None = None
        if "mlp" in paths:
            self.user_mlp = nn.Parameter(torch.randn(num_users, mlp_dim) * init_std)
            self.item_mlp = nn.Parameter(torch.randn(num_items, mlp_dim) * init_std)
            # Alone, a zero MLP output would start with every score equal: nothing to rank, no gradient signal.
            self.mlp = PairMLP(mlp_dim, mlp_dim, hidden, dropout, zero_init_output=zero_init_mlp and self.gmf)

    def score_with_penalty(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        scores, vectors = torch.zeros(items.shape, device=items.device), []
        if self.gmf:
            user_gmf, item_gmf = self.rows(self.user_gmf, users), self.rows(self.item_gmf, items)
            weighted_user = user_gmf * self.gmf_output
            if items.dim() > users.dim():
                weighted_user = weighted_user.unsqueeze(-2)
            scores = scores + (weighted_user * item_gmf).sum(-1)
            vectors += [user_gmf, item_gmf]
        if self.mlp is not None:
            user_mlp, item_mlp = self.rows(self.user_mlp, users), self.rows(self.item_mlp, items)
            scores = scores + self.mlp(user_mlp, item_mlp)
            vectors += [user_mlp, item_mlp]
        return scores, sum(v.square().sum() for v in vectors) / len(users)

    def score_all(self, users: Tensor) -> Tensor:
        return self._score_matrix(users, None)

    def score_items(self, users: Tensor, items: Tensor) -> Tensor:
        return self._score_matrix(users, items)

    def _score_matrix(self, users: Tensor, items: Tensor | None) -> Tensor:
        """[U, N] scores against `items` (None: the whole catalogue, without gathering its rows)."""
        scores: Tensor | int = 0
        if self.gmf:
            item_gmf = self.item_gmf if items is None else self.rows(self.item_gmf, items)
            scores = (self.rows(self.user_gmf, users) * self.gmf_output) @ item_gmf.T
        if self.mlp is not None:
            item_mlp = self.item_mlp if items is None else self.rows(self.item_mlp, items)
            scores = scores + self.mlp.score_all(self.rows(self.user_mlp, users), item_mlp)
        return scores

    # Ranking rows: [q_i ; q'_i] against [p_u * h_gmf ; p'_u], the GMF columns first.

    def item_table_names(self) -> list[str]:
        return (["item_gmf"] if self.gmf else []) + (["item_mlp"] if self.mlp is not None else [])

    def ranking_item_rows(self, tables: Mapping[str, Tensor], items: Tensor) -> Tensor:
        return torch.cat([tables[name] for name in self.item_table_names()], 1)

    def ranking_queries(self, users: Tensor) -> Tensor:
        parts = [self.rows(self.user_gmf, users) * self.gmf_output] if self.gmf else []
        return torch.cat(parts + ([self.rows(self.user_mlp, users)] if self.mlp is not None else []), 1)

    def score_item_rows(self, queries: Tensor, item_rows: Tensor) -> Tensor:
        gmf_width = self.gmf_output.shape[0] if self.gmf else 0
        scores: Tensor | int = 0
        if self.gmf:
            scores = queries[:, :gmf_width] @ item_rows[:, :gmf_width].T
        if self.mlp is not None:
            scores = scores + self.mlp.score_all(queries[:, gmf_width:], item_rows[:, gmf_width:])
        return scores

    def load_pretrained(self, sources: Sequence[Mapping[str, Tensor]]) -> None:
        """The paper's fusion: when the GMF and the MLP output layers come from two separately trained
        models, each of which scored alone, their sum is weighted alpha and 1 - alpha."""
        super().load_pretrained(sources)
        mlp_output = f"mlp.tower.{len(self.mlp.tower) - 1}.weight" if self.mlp is not None else None
        gmf_from = [i for i, source in enumerate(sources) if "gmf_output" in source]
        mlp_from = [i for i, source in enumerate(sources) if mlp_output in source]
        if gmf_from and mlp_from and gmf_from != mlp_from:
            with torch.no_grad():
                self.gmf_output.mul_(self.pretrained_alpha)
                self.mlp.tower[-1].weight.mul_(1 - self.pretrained_alpha)
                self.mlp.tower[-1].bias.mul_(1 - self.pretrained_alpha)

    def embedding_tables(self) -> dict[str, tuple[Tensor, Tensor]]:
        """GMF first: its dot-product geometry is what cosine similarity measures; the MLP
        embeddings only mean something through the MLP."""
        tables = {"gmf": (self.user_gmf, self.item_gmf)} if self.gmf else {}
        if self.mlp is not None:
            tables["mlp"] = (self.user_mlp, self.item_mlp)
        return tables

    def row_tables(self) -> list[nn.Parameter]:
        tables = [self.user_gmf, self.item_gmf] if self.gmf else []
        return tables + ([self.user_mlp, self.item_mlp] if self.mlp is not None else [])
