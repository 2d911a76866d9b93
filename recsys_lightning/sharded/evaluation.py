"""Full ranking of evaluation chunks when the model's tables are TorchRec's (trainer=sharded).

Every lookup of a held table is a collective, and so is the merged top-K over a row-wise item table, so
every rank must rank as many chunks as the others: Lightning hands a rank only its own chunks, so the
module collects them during the epoch and ranks them here at its end, padded to the longest rank
(`padded_chunks`). A row-wise item table is scored block by block on its ranks and the candidates merged
(`sharded_top_k`, each chunk's user rows sent to every rank: see its module for what an MLP-scored model
costs); a replicated one is whole on every rank and ranked as in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from recsys_lightning.data.batches import RankingChunk
from recsys_lightning.models.base import Recommender
from recsys_lightning.ranking import top_k_unseen
from recsys_lightning.sharded.ranking import RowBlocks, padded_chunks, sharded_top_k
from recsys_lightning.sharded.tables import local_rows

# Called with a chunk's scores [B, num_items] before ranking overwrites them (the loss's prediction metrics).
ScoresHook = Callable[[Tensor, RankingChunk, int], None]
PairsHook = Callable[[Recommender, tuple[RankingChunk, int] | None], None]


def held_ranking(
    model: Recommender,
    chunks: Sequence[tuple[RankingChunk, int]],
    k: int,
    before_ranking: ScoresHook,
    pairs_hook: PairsHook | None = None,
) -> Iterator[tuple[RankingChunk, int, Tensor, Tensor]]:
    """(chunk, batch index, top `k` items [B, min(k, num_items)], which of them are shown) of each of this
    rank's `chunks` (with their batch index); every rank iterates it to the end, together. A top K longer
    than a user's unseen items ends in hidden (seen) ones at -inf: not shown, as in one process's test
    step. `before_ranking` sees the scores of a replicated item table; a row-wise one never has a chunk's
    scores against the whole catalogue, so `pairs_hook` (when given) is called instead with each chunk and
    its index, or None for a padding chunk, on every rank, to score just the pairs it needs (each lookup a
    collective)."""
    tables = model.sharded_tables
    block, row_wise = item_block(model), tables.row_wise(model.item_table_names()[0])
    layout = RowBlocks(model.num_items, dist.get_world_size())
    empty = torch.zeros(0, dtype=torch.long, device=tables.device)
    for entry in padded_chunks(chunks, device=tables.device):
        chunk = None if entry is None else entry[0]
        users, rows, items = (empty, empty, empty) if chunk is None else (chunk.users, chunk.exclude_rows, chunk.exclude_items)
        queries = model.ranking_queries(users)  # lookups: collectives, made on every rank
        if row_wise:
            if pairs_hook is not None:  # lookups too: every rank scores its pairs, none for a padding chunk
                pairs_hook(model, None if entry is None else entry)
            top_items, top_scores = sharded_top_k(queries, block, rows, items, k, layout, score=model.score_item_rows)
        else:
            scores = model.score_item_rows(queries, block)
            if entry is not None:
                before_ranking(scores, *entry)
            top_items = top_k_unseen(scores, rows, items, k)
            top_scores = scores.gather(1, top_items)  # the hidden items' -inf included: ranking wrote them
        if entry is not None:
            yield entry[0], entry[1], top_items, top_scores > -torch.inf


def item_block(model: Recommender) -> Tensor:
    """This rank's rows of the item tables, combined as the model ranks them (`ranking_item_rows`: MF's
    [q_i, 1, b_i], NeuMF's [q_i; q'_i]); the whole tables where they are replicated. With side features the
    block's items add their features' mean: a lookup of the feature table, a collective every rank makes here."""
    parts = {name: local_rows(model, name) for name in model.item_table_names()}
    first, count = next((first, len(rows)) for rows, first, _ in parts.values())
    for name, (rows, name_first, _) in parts.items():
        if (name_first, len(rows)) != (first, count):
            raise ValueError(f"{name} holds rows {name_first}+{len(rows)} on this rank, the other item tables {first}+{count}")
    items = torch.arange(first, first + count, device=model.sharded_tables.device)
    return model.ranking_item_rows({name: rows for name, (rows, _, _) in parts.items()}, items)
