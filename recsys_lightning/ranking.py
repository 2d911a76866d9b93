"""Top-K over the catalogue with a user's known items hidden: shared by evaluation and serving."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Below this many items `topk` over whole rows is as fast as pruning by blocks first (27k items: even);
# above it, pruning wins: 2.4x at 100k items, ~6x at 1M (bench/RESULTS.md, "Validation on a sample").
BLOCKED_TOP_K_MIN_ITEMS = 2**16


def top_k_unseen(scores: Tensor, exclude_rows: Tensor, exclude_items: Tensor, k: int, candidates: Tensor | None = None) -> Tensor:
    """Indices of the `k` best items per row of `scores` [B, num_items], never an excluded one, and with
    `candidates` (a bool [num_items] mask, e.g. the new items of eval.candidates=cold) only among those:
    every other item scores -inf, one broadcast op over the chunk, so it ranks after every candidate.

    `scores` is overwritten: it is a chunk's scratch buffer, and copying it would double memory.
    """
    if candidates is not None:
        scores.masked_fill_(~candidates, -torch.inf)
    scores[exclude_rows, exclude_items] = -torch.inf
    return top_k(scores, k)


def top_k(scores: Tensor, k: int, block_size: int | None = None) -> Tensor:
    """Indices of the `k` (at most num_items) highest scores per row of `scores` [B, num_items], best
    first: `scores.topk(k).indices`, ties aside, without sorting whole rows of a large catalogue.

    Each row is cut into blocks of `block_size` items (None: chosen from the shape; 0: no blocks). An
    item of the top k lies in a block whose maximum is at least the k-th score, and at most k blocks
    hold one, so the top k of the k blocks with the highest maxima (and of the items after the last
    whole block) is the top k of the row: one pass of `amax` over the scores, then a `topk` over
    k x block_size candidates. Nothing the size of a contiguous `scores` is allocated.
    """
    num_rows, num_items = scores.shape
    k = min(k, num_items)
    if block_size is None:
        block_size = _block_size(num_items, k)
    num_blocks = num_items // block_size if block_size else 0
    if num_blocks <= k:
        return scores.topk(k, dim=1).indices
    blocked_items = num_blocks * block_size
    block_maxima = scores[:, :blocked_items].reshape(num_rows, num_blocks, block_size).amax(2)
    top_blocks = block_maxima.topk(k, dim=1).indices
    offsets = torch.arange(block_size, device=scores.device)
    candidates = (top_blocks.unsqueeze(2) * block_size + offsets).reshape(num_rows, k * block_size)
    if blocked_items < num_items:
        tail = torch.arange(blocked_items, num_items, device=scores.device)
        candidates = torch.cat([candidates, tail.expand(num_rows, -1)], 1)
    best = scores.gather(1, candidates).topk(k, dim=1).indices
    return candidates.gather(1, best)


def _block_size(num_items: int, k: int) -> int:
    """0 (no blocks) where plain `topk` is as fast: a small catalogue, or a k so large that blocks are
    tiny or the candidates a sizeable share of the catalogue. Else a power of two near sqrt(num_items / k), which balances
    the block maxima to rank (num_items / block_size) against the candidates (k x block_size)."""
    block_size = 2 ** round(math.log2(math.sqrt(num_items / max(k, 1))))
    if num_items < BLOCKED_TOP_K_MIN_ITEMS or block_size < 32 or 16 * k * block_size > num_items:
        return 0
    return block_size


def hits(top_items: Tensor, relevant_rows: Tensor, relevant_items: Tensor, num_items: int) -> Tensor:
    """Boolean [B, k]: whether each recommended item is among that row's relevant items.

    Membership is a sorted-key lookup, so no dense [B, num_items] mask is built.
    """
    relevant_keys = torch.sort(relevant_rows * num_items + relevant_items).values
    rows = torch.arange(len(top_items), device=top_items.device).unsqueeze(1)
    query = rows * num_items + top_items
    position = torch.searchsorted(relevant_keys, query).clamp(max=max(len(relevant_keys) - 1, 0))
    return relevant_keys[position] == query if len(relevant_keys) else torch.zeros_like(query, dtype=torch.bool)
