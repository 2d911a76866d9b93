"""Side features for embedding models (LightFM-style): an entity's vector is its id embedding plus the
mean of its features' embeddings, so an item nobody has interacted with yet is scored from its features."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from recsys_lightning.models.base import HeldRows
from recsys_lightning.models.sparse import empty_sparse, sparse_rows


class FeatureEmbedding(nn.Module):
    """Vectors (and optional scalar biases) of one side's entities, from their features.

    `features` is a sparse [entities, features] matrix whose row holds 1 / (the entity's feature count)
    at each of its features, so a product with the feature embeddings is their mean, and `trained`
    marks entities with training interactions. An entity without them has no id embedding worth
    anything (it was never a positive, at most a sampled negative), so `id_vectors` zeroes it there:
    its score then depends on its features alone. Both are buffers, so a checkpoint serves without
    the data; the matrix is sparse, its entries travel with it.

    Under trainer=sharded `embedding` is one more TorchRec table (a `HeldRows` handle: row-wise over the
    ranks or replicated, as its size decides), while `features` and `trained` are data, not parameters:
    every rank holds them whole, nnz x 20 bytes (two int64 indices and a float32 value per entry) plus
    entities x 4 bytes a side, and no step sends them (the strategy keeps them out of DDP's broadcast).
    """

    embedding: nn.Parameter | HeldRows

    def __init__(self, num_entities: int, num_features: int, dim: int, init_std: float, bias: bool, id_dropout: float = 0.0) -> None:
        super().__init__()
        self.id_dropout = id_dropout
        self.bias = bias
        self.register_buffer("features", empty_sparse(num_entities, num_features))
        self.register_buffer("trained", torch.ones(num_entities, 1))
        # the last column is each feature's bias, so vectors and biases cost one sparse product
        self.embedding = nn.Parameter(torch.randn(num_features, dim + int(bias)) * init_std)
        if bias:
            with torch.no_grad():
                self.embedding[:, -1] = 0

    def set_features(self, features: Tensor, trained: Tensor) -> None:
        """The data's features as a sparse [entities, features] row-mean matrix, and which entities have
        training interactions ([entities] bool)."""
        if features.shape != self.features.shape:
            shape = tuple(self.features.shape)
            raise ValueError(f"features are {features.shape[0]} x {features.shape[1]}, the model was built for {shape}")
        # A model built on the meta device (trainer=sharded: its tables are TorchRec's) gets real data all the same.
        device = features.device if self.trained.is_meta else self.trained.device
        self.features = features.coalesce().to(device)
        self.trained = trained.reshape(-1, 1).float().to(device)

    def rows(self, index: Tensor) -> Tensor:
        """[*index.shape, dim (+1)] feature vectors of the entities `index`, gathering only their rows."""
        flat = index.reshape(-1).contiguous()
        picked = sparse_rows(self.features, flat)
        if isinstance(self.embedding, Tensor):
            product = torch.sparse.mm(picked, self.embedding)
            return product.view(*index.shape, product.shape[1])
        # A held table: gather the rows of the features the entities hold (one lookup, a collective under
        # trainer=sharded), weight each by 1 / the entity's feature count and sum them per entity.
        entities, feature_ids = picked.indices()
        weighted = self.embedding.gather(feature_ids) * picked.values().unsqueeze(1)
        summed = weighted.new_zeros(len(flat), weighted.shape[1]).index_add_(0, entities, weighted)
        return summed.view(*index.shape, summed.shape[1])

    def all(self) -> Tensor:
        """[entities, dim (+1)] feature vectors of every entity."""
        if isinstance(self.embedding, Tensor):
            return torch.sparse.mm(self.features, self.embedding)
        return self.rows(torch.arange(self.features.shape[0], device=self.trained.device))

    def id_mask(self, index: Tensor) -> Tensor:
        """[*index.shape, 1]: 1 for entities with training interactions, 0 for cold ones.

        In training, `id_dropout` also hides a share of trained ids (DropoutNet, Volkovs et al. 2017):
        the features alone must then rank those, which is all a cold entity will ever have. Without it
        the features only learn what the ids leave over, and cold items rank below every warm one.
        """
        mask = self.trained.index_select(0, index.reshape(-1)).view(*index.shape, 1)
        if self.training and self.id_dropout > 0:
            mask = mask * (torch.rand_like(mask) >= self.id_dropout)
        return mask


class SideFeatures:
    """For models with optional `user_features` / `item_features` (None when off): builds them, and takes
    the data's feature matrices through `Recommender.set_features`."""

    user_features: FeatureEmbedding | None
    item_features: FeatureEmbedding | None

    def init_side_features(self, num_users: int, num_items: int, sizes: tuple[int, int] | None, **embedding: Any) -> None:
        """`sizes` = (user, item) feature counts when the model's `features` is on, else None."""
        if sizes is not None and not any(sizes):
            raise ValueError("model.features=true needs features in the data: set data.item_features or data.user_features")
        num_user_features, num_item_features = sizes or (0, 0)
        self.user_features = FeatureEmbedding(num_users, num_user_features, **embedding) if num_user_features else None
        self.item_features = FeatureEmbedding(num_items, num_item_features, **embedding) if num_item_features else None

    def shardable_tables(self) -> list[nn.Parameter]:
        """The row tables, and each side's feature embedding: trainer=sharded holds them all in TorchRec."""
        sides = (self.user_features, self.item_features)
        return self.row_tables() + [side.embedding for side in sides if side is not None]

    def set_features(self, item_features: Tensor | None, user_features: Tensor | None, item_counts: Tensor, user_counts: Tensor) -> None:
        for side, features, counts in ((self.item_features, item_features, item_counts), (self.user_features, user_features, user_counts)):
            if side is not None and features is not None:
                side.set_features(features, counts > 0)
