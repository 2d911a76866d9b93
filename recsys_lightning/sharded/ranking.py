"""Exact top-K over the whole catalogue when the item table is split in row blocks over ranks.

The exchange, per chunk of users: every rank all-gathers the chunk's query vectors (a chunk x dim on
each rank, W times), sends each excluded (seen) item to the rank whose block holds it, scores every
rank's queries against its own block, keeps a top K per user of that block, and sends the candidates
back to the users' rank, which merges W x K per user into the top K. Per chunk a rank moves
about W x chunk x dim query values and chunk x W x K candidates, never a table block: streaming
the blocks to every rank instead would move the whole table once per chunk. Memory is one chunk x
one block of scores at a time (the sources' queries are scored one after the other).

A model scored by more than a product (an MLP over [user; item]: hybrid, ncf) ranks the same way: its
queries are all it needs of a user (`Recommender.ranking_queries`: NeuMF's GMF and MLP rows side by side),
and `score` runs its scoring on the block (`score_item_rows`). Only user rows travel, as for a product:
no rank ever gathers another's item rows, and the MLP's work over the catalogue is split by item block,
each rank running it for every rank's users against its own items (W x chunk users x block items a chunk,
what one process runs for its chunk against the whole catalogue).

Ties are broken by the lower global item index, at every W: `torch.topk`, which today's ranking
(`ranking.top_k`) uses, promises no order among equal scores on CPU, so equal scores (an item
table's untrained twins, the hidden items when K exceeds a user's unseen ones) would otherwise
rank differently at different W.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from recsys_lightning.ranking import top_k

Chunk = TypeVar("Chunk")
# Scores [n, rows] of n queries [n, dim] against a block of item rows [rows, dim].
BlockScore = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class RowBlocks:
    """TorchRec's row-wise layout of a table of `num_rows` over `world` ranks: rank r holds rows
    [r * B, min((r + 1) * B, num_rows)) with B = ceil(num_rows / world), the last block shorter (or empty)."""

    num_rows: int
    world: int

    @property
    def block_rows(self) -> int:
        return -(-self.num_rows // self.world)

    def bounds(self, rank: int) -> tuple[int, int]:
        """[start, stop) of the rows rank `rank` holds."""
        start = min(rank * self.block_rows, self.num_rows)
        return start, min(start + self.block_rows, self.num_rows)

    def owners(self, rows: Tensor) -> Tensor:
        """The rank holding each of `rows`."""
        return torch.div(rows, max(self.block_rows, 1), rounding_mode="floor")


def padded_chunks(
    chunks: Sequence[Chunk], group: dist.ProcessGroup | None = None, device: torch.device | str = "cpu"
) -> Iterator[Chunk | None]:
    """The rank's `chunks`, then None until every rank has yielded as many: `sharded_top_k` is a
    collective, so a rank with fewer chunks ranks empty ones (no queries) while the others finish.
    `device`: where the backend communicates (a CUDA device for NCCL)."""
    count = torch.tensor([len(chunks)], device=device)
    dist.all_reduce(count, dist.ReduceOp.MAX, group=group)
    for index in range(int(count)):
        yield chunks[index] if index < len(chunks) else None


def sharded_top_k(
    queries: Tensor,
    item_block: Tensor,
    exclude_rows: Tensor,
    exclude_items: Tensor,
    k: int,
    layout: RowBlocks,
    group: dist.ProcessGroup | None = None,
    score: BlockScore | None = None,
) -> tuple[Tensor, Tensor]:
    """(global item indices, scores), each [n, min(k, num_items)], best first, of the rank's `queries`
    [n, dim] (n = 0 for a padding chunk) against every rank's `item_block` [rows it holds, dim], the
    items (`exclude_rows`, `exclude_items`) global coordinates never ranked: what `ranking.top_k_unseen`
    gives over `score(queries, table)` (by default `queries @ table.T`) in one process, ties to the lower
    index. Every rank calls it, the same number of times (`padded_chunks`).
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    start, stop = layout.bounds(rank)
    if world != layout.world or len(item_block) != stop - start:
        raise ValueError(f"rank {rank} of {world} holds {len(item_block)} rows of {layout}; expected rows {start}..{stop - 1}")
    device, width = queries.device, min(k, layout.num_rows)
    owners = layout.owners(exclude_items)
    send_counts = torch.bincount(owners, minlength=world)
    sizes = torch.cat([torch.tensor([len(queries)], device=device), send_counts.to(device)])
    gathered = [torch.empty_like(sizes) for _ in range(world)]
    dist.all_gather(gathered, sizes, group=group)
    sizes = torch.stack(gathered).cpu()  # [source, 1 + destination]: queries, then excluded items sent
    num_queries = sizes[:, 0].tolist()
    if max(num_queries) == 0:  # every rank pads: nothing to rank anywhere
        return torch.empty(0, width, dtype=torch.long, device=device), queries.new_empty(0, width)

    all_queries = _gathered_queries(queries, max(num_queries), world, group)
    exclusions = _exclusions_by_source(exclude_rows, exclude_items, owners, send_counts, sizes[:, 1 + rank], layout, group)
    local_width = min(k, stop - start)
    candidates = []
    for source in range(world):  # one chunk x one block of scores at a time
        source_queries = all_queries[source][: num_queries[source]]
        scores = _block_scores(source_queries, item_block, score)
        rows, items = exclusions[source].unbind(1)
        scores[rows, items] = -torch.inf
        values, indices = _block_top_k(scores, local_width)
        candidates.append(torch.stack([values.double(), (indices + start).double()], 2).reshape(-1, 2))
    widths = [min(k, stop_r - start_r) for start_r, stop_r in map(layout.bounds, range(world))]
    received = _all_to_all(torch.cat(candidates), [count * local_width for count in num_queries], [len(queries) * w for w in widths], group)
    merged = torch.cat([part.view(len(queries), w, 2) for part, w in zip(received.split([len(queries) * w for w in widths]), widths)], 1)
    # Blocks arrive in index order, each sorted by (score desc, index asc): a stable sort keeps that order among ties.
    best = merged[..., 0].sort(dim=1, descending=True, stable=True).indices[:, :width]
    chosen = merged.gather(1, best.unsqueeze(2).expand(-1, -1, 2))
    return chosen[..., 1].long(), chosen[..., 0].to(queries.dtype)


def _block_scores(queries: Tensor, item_block: Tensor, score: BlockScore | None) -> Tensor:
    """[n, rows] scores; a padding source's (no queries) or an empty block's are never handed to `score`."""
    if score is None:
        return queries @ item_block.T
    if not len(queries) or not len(item_block):
        return queries.new_zeros(len(queries), len(item_block))
    return score(queries, item_block)


def _gathered_queries(queries: Tensor, max_queries: int, world: int, group: dist.ProcessGroup | None) -> list[Tensor]:
    """Every rank's queries, each padded to the longest chunk (all_gather takes equal shapes)."""
    padded = queries.new_zeros(max_queries, queries.shape[1])
    padded[: len(queries)] = queries
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    return gathered


def _exclusions_by_source(
    rows: Tensor,
    items: Tensor,
    owners: Tensor,
    send_counts: Tensor,
    receive_counts: Tensor,
    layout: RowBlocks,
    group: dist.ProcessGroup | None,
) -> list[Tensor]:
    """The (row in the source's chunk, row in this rank's block) pairs each source hides in this rank's
    block: only the seen items that fall in a block travel, to that block's rank."""
    order = torch.argsort(owners, stable=True)
    block_starts = owners * layout.block_rows
    outgoing = torch.stack([rows, items - block_starts], 1)[order]
    received = _all_to_all(outgoing, send_counts.tolist(), receive_counts.tolist(), group)
    return list(received.split(receive_counts.tolist()))


def _all_to_all(outgoing: Tensor, send_sizes: list[int], receive_sizes: list[int], group: dist.ProcessGroup | None) -> Tensor:
    """Rows of `outgoing` [sum(send_sizes), 2], send_sizes[r] of them to rank r, in rank order."""
    received = outgoing.new_empty(sum(receive_sizes), outgoing.shape[1])
    dist.all_to_all_single(received, outgoing.contiguous(), receive_sizes, send_sizes, group=group)
    return received


def _block_top_k(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values, indices) [n, k] of each row's k best, ordered by score descending then index ascending,
    the k-th score's ties taken from the lowest indices: `top_k` chooses among them arbitrarily. One more
    than k is ranked to see which rows tie across the cut (the (k+1)-th score equals the k-th): only
    those rows are scanned again."""
    ranked = top_k(scores, min(k + 1, scores.shape[1]))
    indices = ranked[:, :k]
    values = scores.gather(1, indices)
    if ranked.shape[1] > k > 0:
        kth = values[:, k - 1 : k]
        ambiguous = (scores.gather(1, ranked[:, k:]) == kth).flatten().nonzero().flatten()
        if len(ambiguous):  # rare: only rows with more items at the k-th score than places left
            row_scores, row_kth = scores[ambiguous], kth[ambiguous]
            level = row_scores == row_kth
            places = k - (row_scores > row_kth).sum(1, keepdim=True)
            taken = (row_scores > row_kth) | (level & (level.cumsum(1) <= places))
            indices[ambiguous] = taken.nonzero()[:, 1].view(len(ambiguous), k)
            values = scores.gather(1, indices)
    indices, by_index = indices.sort(1)
    values = values.gather(1, by_index)
    by_score = values.sort(dim=1, descending=True, stable=True).indices
    return values.gather(1, by_score), indices.gather(1, by_score)
