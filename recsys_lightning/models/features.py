"""Side features for embedding models (LightFM-style): an entity's vector is its id embedding plus the
mean of its features' embeddings, so an item nobody has interacted with yet is scored from its features."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from recsys_lightning.models.sparse import empty_sparse, sparse_rows


class FeatureEmbedding(nn.Module):
    """Vectors (and optional scalar biases) of one side's entities, from their features.

    `features` is a sparse [entities, features] matrix whose row holds 1 / (the entity's feature count)
    at each of its features, so a product with the feature embeddings is their mean, and `trained`
    marks entities with training interactions. An entity without them has no id embedding worth
    anything (it was never a positive, at most a sampled negative), so `id_vectors` zeroes it there:
    its score then depends on its features alone. Both are buffers, so a checkpoint serves without
    the data; the matrix is sparse, its entries travel with it.
    """

    def __init__(self, num_entities: int, num_features: int, dim: int, init_std: float, bias: bool, id_dropout: float = 0.0) -> None:
        super().__init__()
        self.id_dropout = id_dropout
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
        self.features = features.coalesce().to(self.trained.device)
        self.trained.copy_(trained.reshape(-1, 1).float())

    def rows(self, index: Tensor) -> Tensor:
        """[*index.shape, dim (+1)] feature vectors of the entities `index`, gathering only their rows."""
        picked = sparse_rows(self.features, index.reshape(-1).contiguous())
        return torch.sparse.mm(picked, self.embedding).view(*index.shape, -1)

    def all(self) -> Tensor:
        """[entities, dim (+1)] feature vectors of every entity."""
        return torch.sparse.mm(self.features, self.embedding)

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

    def set_features(self, item_features: Tensor | None, user_features: Tensor | None, item_counts: Tensor, user_counts: Tensor) -> None:
        for side, features, counts in ((self.item_features, item_features, item_counts), (self.user_features, user_features, user_counts)):
            if side is not None and features is not None:
                side.set_features(features, counts > 0)
