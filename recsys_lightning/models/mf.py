"""Matrix factorisation with optional user and item biases (and, for rating prediction, the global mean)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import torch
from torch import Tensor, nn

from recsys_lightning.models.base import Recommender
from recsys_lightning.models.features import FeatureEmbedding, SideFeatures
from recsys_lightning.ranges import FLAG, MAX_COUNT, MAX_WIDTH, POSITIVE, Range


class MatrixFactorization(SideFeatures, Recommender):
    """score(u, i) = mu + b_u + b_i + <p_u, q_i> (Koren, Bell & Volinsky 2009, eq. 4).

    Biases are one-column tables ([n, 1]) so they are gathered like embeddings, sparse gradients included.
    `global_mean` mu is the mean training rating for losses that predict ratings (set by the module,
    saved in the checkpoint), else 0; it is one of the biases, so `bias=False` drops it too.

    With `features` (and features in the data), p_u, q_i, b_u and b_i each add the mean of the entity's
    feature embeddings and biases (LightFM), and an entity without training interactions keeps only
    those: a new item is ranked by what it is. The feature counts are set from the data, not by users.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: Annotated[int, Range(1, MAX_WIDTH)] = 64,
        bias: Annotated[bool, FLAG] = True,
        init_std: Annotated[float, POSITIVE] = 0.1,
        features: Annotated[bool, FLAG] = False,
        id_dropout: Annotated[float, Range(0, 1, open_high=True)] = 0.0,
        num_user_features: Annotated[int, Range(0, MAX_COUNT)] = 0,
        num_item_features: Annotated[int, Range(0, MAX_COUNT)] = 0,
        sparse_gradients: Annotated[bool, FLAG] = False,
    ) -> None:
        super().__init__(num_users, num_items, sparse_gradients)
        self.user_factors = nn.Parameter(torch.randn(num_users, dim) * init_std)
        self.item_factors = nn.Parameter(torch.randn(num_items, dim) * init_std)
        self.user_bias = nn.Parameter(torch.zeros(num_users, 1)) if bias else None
        self.item_bias = nn.Parameter(torch.zeros(num_items, 1)) if bias else None
        self.register_buffer("global_mean", torch.zeros(()) if bias else None)
        sizes = (num_user_features, num_item_features) if features else None
        self.init_side_features(num_users, num_items, sizes, dim=dim, init_std=init_std, id_dropout=id_dropout, bias=bias)

    def score_with_penalty(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        user_vectors, user_bias = self._side(users, self.user_factors, self.user_bias, self.user_features)
        item_vectors, item_bias = self._side(items, self.item_factors, self.item_bias, self.item_features)
        penalty = user_vectors.square().sum() + item_vectors.square().sum()
        if items.dim() > users.dim():
            user_vectors = user_vectors.unsqueeze(-2)  # one user row against N items
        scores = (user_vectors * item_vectors).sum(-1)
        if item_bias is not None:
            user_bias, item_bias = user_bias.squeeze(-1), item_bias.squeeze(-1)
            scores = scores + item_bias + (user_bias.unsqueeze(-1) if items.dim() > users.dim() else user_bias) + self.global_mean
            penalty = penalty + user_bias.square().sum() + item_bias.square().sum()
        return scores, penalty / len(users)

    def _side(self, index: Tensor, factors: Tensor, bias: Tensor | None, features: FeatureEmbedding | None) -> tuple[Tensor, Tensor | None]:
        """Vectors and biases of users or items `index`: their id rows, plus their features' mean when on."""
        biases = None if bias is None else self.rows(bias, index)
        return self._with_features(index, self.rows(factors, index), biases, features)

    @staticmethod
    def _with_features(
        index: Tensor, vectors: Tensor, biases: Tensor | None, features: FeatureEmbedding | None
    ) -> tuple[Tensor, Tensor | None]:
        """The id rows of `index` (`vectors`, `biases`), plus their features' mean when on (a cold entity's id rows left out)."""
        if features is None:
            return vectors, biases
        trained, from_features = features.id_mask(index), features.rows(index)
        vectors = trained * vectors + from_features[..., : vectors.shape[-1]]
        biases = None if biases is None else trained * biases + from_features[..., -1:]
        return vectors, biases

    def score_all(self, users: Tensor) -> Tensor:
        return self.query_vectors(users) @ self.item_vectors().T

    def score_items(self, users: Tensor, items: Tensor) -> Tensor:
        return self.query_vectors(users) @ self._item_rows(items).T

    def set_global_mean(self, mean: float) -> None:
        if self.global_mean is not None:
            self.global_mean.fill_(mean)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # Checkpoints written before the global mean existed were trained without one: 0 scores as they did.
        if self.global_mean is not None and prefix + "global_mean" not in state_dict:
            state_dict[prefix + "global_mean"] = torch.zeros(())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # [p_u, b_u + mu, 1] . [q_i, 1, b_i] = <p_u, q_i> + mu + b_u + b_i: the biases ride in the one GEMM
    # (instead of two more passes over a [B, num_items] result), and in a vector index.
    def query_vectors(self, users: Tensor) -> Tensor:
        user_vectors, user_bias = self._side(users, self.user_factors, self.user_bias, self.user_features)
        if user_bias is None:
            return user_vectors
        return torch.cat([user_vectors, user_bias + self.global_mean, torch.ones_like(user_vectors[:, :1])], 1)

    def item_vectors(self) -> Tensor:
        if self.item_features is not None:
            return self._item_rows(torch.arange(self.num_items, device=self.item_factors.device))
        if self.item_bias is None:
            return self.item_factors
        return torch.cat([self.item_factors, torch.ones_like(self.item_bias), self.item_bias], 1)

    def _item_rows(self, items: Tensor) -> Tensor:
        """`item_vectors()[items]`, gathering only those rows."""
        item_vectors, item_bias = self._side(items, self.item_factors, self.item_bias, self.item_features)
        if item_bias is None:
            return item_vectors
        return torch.cat([item_vectors, torch.ones_like(item_vectors[:, :1]), item_bias], 1)

    def item_table_names(self) -> list[str]:
        return ["item_factors"] if self.item_bias is None else ["item_factors", "item_bias"]

    def ranking_item_rows(self, tables: Mapping[str, Tensor], items: Tensor) -> Tensor:
        """[q_i, 1, b_i], as `item_vectors`: the biases ride in the product with `query_vectors`."""
        factors, bias = self._with_features(items, tables["item_factors"], tables.get("item_bias"), self.item_features)
        if bias is None:
            return factors
        return torch.cat([factors, torch.ones_like(bias), bias], 1)

    def ranking_queries(self, users: Tensor) -> Tensor:
        return self.query_vectors(users)

    def embedding_tables(self) -> dict[str, tuple[Tensor, Tensor]]:
        return {"factors": (self.user_factors, self.item_factors)}

    def row_tables(self) -> list[nn.Parameter]:
        return [table for table in (self.user_factors, self.item_factors, self.user_bias, self.item_bias) if table is not None]
