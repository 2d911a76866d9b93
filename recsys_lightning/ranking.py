"""Top-K over the catalogue with a user's known items hidden: shared by evaluation and serving."""

from __future__ import annotations

import torch
from torch import Tensor


def top_k_unseen(scores: Tensor, exclude_rows: Tensor, exclude_items: Tensor, k: int) -> Tensor:
    """Indices of the `k` best items per row of `scores` [B, num_items], never an excluded one.

    `scores` is overwritten: it is a chunk's scratch buffer, and copying it would double memory.
    """
    scores[exclude_rows, exclude_items] = -torch.inf
    return scores.topk(min(k, scores.shape[1]), dim=1).indices


def hits(top_items: Tensor, relevant_rows: Tensor, relevant_items: Tensor, num_items: int) -> Tensor:
    """Boolean [B, k]: whether each recommended item is among that row's relevant items.

    Membership is a sorted-key lookup, so no dense [B, num_items] mask is built.
    """
    relevant_keys = torch.sort(relevant_rows * num_items + relevant_items).values
    rows = torch.arange(len(top_items), device=top_items.device).unsqueeze(1)
    query = rows * num_items + top_items
    position = torch.searchsorted(relevant_keys, query).clamp(max=max(len(relevant_keys) - 1, 0))
    return relevant_keys[position] == query if len(relevant_keys) else torch.zeros_like(query, dtype=torch.bool)
