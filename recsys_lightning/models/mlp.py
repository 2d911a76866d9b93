"""An MLP over [user vector; item vector] that scores pairs and whole catalogues without concatenating."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class PairMLP(nn.Module):
    """MLP([u; i]) -> one logit, with ReLU between layers and optional dropout.

    The first layer W [u; i] + b is split into W_u u + W_i i + b, so ranking a chunk of users against
    every item adds a [C, 1, H] and a [1, I, H] term instead of building a [C, I, 2D] input.
    Ranking runs in user slices of at most `max_ranking_activations` first-layer activations: the
    default (1 MiB of floats) stays in cache and ran 4x faster on CPU than 128 MiB slices.
    `zero_init_output` starts the MLP at 0, so a model that adds it to a dot product starts as plain MF.
    """

    def __init__(
        self,
        user_dim: int,
        item_dim: int,
        hidden: Sequence[int] = (64, 32),
        dropout: float = 0.0,
        zero_init_output: bool = False,
        max_ranking_activations: int = 2**18,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("model.hidden needs at least one layer size")
        self.user_in = nn.Linear(user_dim, hidden[0])
        self.item_in = nn.Linear(item_dim, hidden[0], bias=False)
        layers: list[nn.Module] = [nn.ReLU(), nn.Dropout(dropout)]
        for width_in, width_out in zip(hidden[:-1], hidden[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU(), nn.Dropout(dropout)]
        output = nn.Linear(hidden[-1], 1)
        if zero_init_output:
            nn.init.zeros_(output.weight)
            nn.init.zeros_(output.bias)
        self.tower = nn.Sequential(*layers, output)
        self.first_width = hidden[0]
        self.max_ranking_activations = max_ranking_activations

    def forward(self, user_vectors: Tensor, item_vectors: Tensor) -> Tensor:
        """Logits for pairs: `user_vectors` [B, Du] with `item_vectors` [B, Di] or [B, N, Di]."""
        user_part = self.user_in(user_vectors)
        if item_vectors.dim() > user_vectors.dim():
            user_part = user_part.unsqueeze(-2)
        return self.tower(user_part + self.item_in(item_vectors)).squeeze(-1)

    def score_all(self, user_vectors: Tensor, item_vectors: Tensor) -> Tensor:
        """Logits [C, I] for every user against every item, in user slices of bounded activation memory."""
        item_part = self.item_in(item_vectors).unsqueeze(0)
        user_part = self.user_in(user_vectors).unsqueeze(1)
        rows_per_slice = max(1, self.max_ranking_activations // (len(item_vectors) * self.first_width))
        return torch.cat([self.tower(rows + item_part).squeeze(-1) for rows in user_part.split(rows_per_slice)])
