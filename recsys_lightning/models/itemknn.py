"""Item-based k-nearest neighbours (Deshpande & Karypis 2004, "Item-based top-N recommendation
algorithms"): cosine similarity between items' user sets, each item keeping its k most similar items."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from recsys_lightning.models.closed_form import ItemItemRecommender, co_occurrence_blocks
from recsys_lightning.ranges import FLAG, MAX_COUNT, NON_NEGATIVE, Range


class ItemKNN(ItemItemRecommender):
    """score(u, j) = sum of sim(i, j) over the user's training items i that keep j among their
    `num_neighbours` most similar items, with sim(i, j) = |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrink).

    `shrink` pulls similarities that rest on few common users towards zero. Each item's neighbours are
    kept as a row of two [num_items, num_neighbours] tables (a neighbour with no common user weighs 0).
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        num_neighbours: Annotated[int, Range(1, MAX_COUNT)] = 400,
        shrink: Annotated[float, NON_NEGATIVE] = 0.0,
        sparse_gradients: Annotated[bool, FLAG] = False,
    ) -> None:
        super().__init__(num_users, num_items, sparse_gradients)
        self.shrink = shrink
        kept = min(num_neighbours, num_items - 1)
        self.register_buffer("neighbours", torch.zeros(num_items, kept, dtype=torch.long))
        self.register_buffer("neighbour_weights", torch.zeros(num_items, kept))

    def fit_item_weights(self, interactions: Tensor) -> None:
        norms = torch.sparse.sum(interactions, 0).to_dense().sqrt()  # sqrt(|U_i|): X is binary
        for items, co_counts in co_occurrence_blocks(interactions):
            # Where an item has no users its co-counts are 0 too: the clamp keeps 0 / 0 at 0.
            similarities = co_counts / (norms[items, None] * norms + self.shrink).clamp(min=1e-12)
            similarities[torch.arange(len(items), device=items.device), items] = -torch.inf  # never its own neighbour
            top = similarities.topk(self.neighbours.shape[1], dim=1)
            self.neighbours[items] = top.indices
            self.neighbour_weights[items] = top.values

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        error_messages = args[-1]
        # A checkpoint is untrusted: a neighbour outside the catalogue would fail scoring (on CUDA, kill the context).
        if self.neighbours.numel() and not 0 <= int(self.neighbours.min()) <= int(self.neighbours.max()) < self.num_items:
            error_messages.append(f"{prefix}neighbours holds item indices outside [0, {self.num_items})")

    def score_all(self, users: Tensor) -> Tensor:
        # Each (user, training item) entry adds the item's neighbour weights to the user's row: one scatter.
        rows, items = self.history(users).indices()
        scores = self.neighbour_weights.new_zeros(len(users) * self.num_items)
        targets = rows[:, None] * self.num_items + self.neighbours[items]
        return scores.index_add_(0, targets.reshape(-1), self.neighbour_weights[items].reshape(-1)).view(len(users), self.num_items)

    def item_similarities(self, items: Tensor) -> Tensor:
        rows = self.neighbour_weights.new_zeros(len(items), self.num_items)
        return rows.scatter_(1, self.neighbours[items], self.neighbour_weights[items])
