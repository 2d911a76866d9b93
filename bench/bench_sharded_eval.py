"""Full-catalogue ranking with the item table split in row blocks over gloo ranks (issue 25, item 3): metrics
against one process, seconds, and the bytes each rank receives per chunk, at W = 1, 2, 4.

    .venv/bin/python bench/bench_sharded_eval.py --users 20000 --items 30000 --dim 64 --worlds 1 2 4

Random tables (not a trained model) and random interactions: each user has --seen items hidden from its
ranking and --heldout items to find. The one-process figure is today's evaluation (`top_k_unseen` over
`queries @ table.T`, RankingMetrics); each W runs `sharded_top_k` on W processes of one thread each, every
rank holding rows [r*B, (r+1)*B) of the item table, B = ceil(items / W), and its users in RankingChunks
(as DDP evaluation shards them). `max |diff|` is the largest difference of any metric at any K;
`same top-K items` the share of users whose ranked items are identical, `scores` whose ranked scores
are (items differ where scores tie exactly: `torch.topk` orders ties arbitrarily, this by item index). Bytes received per chunk by one rank:
the W - 1 other ranks' padded queries (chunk x dim x 4), the candidates (chunk x W x min(K, B) x 16: score
and index as float64), and the seen items that fall in its block (2 x 8 bytes each), from the sizes used.
The load average is printed beside the times: the host may be shared.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recsys_lightning.data.batches import RankingChunks
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.metrics import RankingMetrics
from recsys_lightning.ranking import top_k_unseen
from recsys_lightning.sharded.ranking import RowBlocks, padded_chunks, sharded_top_k

KS = (10, 20, 100)


def interactions(users: int, items: int, seen: int, heldout: int, seed: int = 0) -> tuple[UserItemCSR, UserItemCSR]:
    """(seen, held out), disjoint: the first `seen` and next `heldout` of a random order of the items, per user."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.rand(users, items, generator=generator).argsort(1)[:, : seen + heldout] if users * items <= 2e8 else None
    if chosen is None:  # without a users x items matrix: draws with replacement, duplicates dropped
        chosen = torch.randint(items, (users, 2 * (seen + heldout)), generator=generator)
        chosen = torch.stack([row.unique()[torch.randperm(len(row.unique()), generator=generator)][: seen + heldout] for row in chosen])
    rows = torch.arange(users).unsqueeze(1)

    def csr(columns: torch.Tensor) -> UserItemCSR:
        user_ids = rows.expand_as(columns).reshape(-1)
        return UserItemCSR.from_pairs(user_ids, columns.reshape(-1), users, items, values=torch.ones(len(user_ids)))

    return csr(chosen[:, :seen]), csr(chosen[:, seen:])


def one_process(user_table, item_table, seen, heldout, chunk_size):
    torch.set_num_threads(1)
    metrics = RankingMetrics(KS, sync_on_compute=False)
    tops = []
    started = time.perf_counter()
    for chunk in RankingChunks(heldout, seen, chunk_size):
        scores = user_table[chunk.users] @ item_table.T
        top = top_k_unseen(scores, chunk.exclude_rows, chunk.exclude_items, max(KS))
        metrics.update_ranked(top, chunk, len(item_table))
        tops.append((chunk.users, top, scores.gather(1, top)))
    seconds = time.perf_counter() - started
    users, top, scores = (torch.cat(parts) for parts in zip(*tops))
    return {name: float(value) for name, value in metrics.compute().items()}, users, top, scores, seconds


def rank_on(rank, world, store, out, user_table, item_table, seen, heldout, chunk_size):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    layout = RowBlocks(len(item_table), world)
    start, stop = layout.bounds(rank)
    block = item_table[start:stop].clone()
    chunks = RankingChunks(heldout, seen, chunk_size, rank, world)
    metrics = RankingMetrics(KS)
    empty = torch.zeros(0, dtype=torch.long)
    users, tops, scores = [], [], []
    dist.barrier()
    started = time.perf_counter()
    for chunk in padded_chunks(chunks):
        chunk_users = empty if chunk is None else chunk.users
        rows, items = (empty, empty) if chunk is None else (chunk.exclude_rows, chunk.exclude_items)
        top, top_scores = sharded_top_k(user_table[chunk_users], block, rows, items, max(KS), layout)
        if chunk is not None:
            metrics.update_ranked(top, chunk, len(item_table))
            users.append(chunk_users)
            tops.append(top)
            scores.append(top_scores)
    dist.barrier()
    seconds = time.perf_counter() - started
    computed = {name: float(value) for name, value in metrics.compute().items()}
    record = {"metrics": computed, "users": torch.cat(users), "tops": torch.cat(tops), "scores": torch.cat(scores)}
    record |= {"seconds": seconds, "chunks": len(chunks)}
    torch.save(record, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--items", type=int, default=30000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seen", type=int, default=50)
    parser.add_argument("--heldout", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(1)
    user_table = torch.randn(args.users, args.dim, generator=generator)
    item_table = torch.randn(args.items, args.dim, generator=generator)
    seen, heldout = interactions(args.users, args.items, args.seen, args.heldout)
    expected, users, tops, scores, seconds = one_process(user_table, item_table, seen, heldout, args.chunk)
    order = users.argsort()
    tops, scores = tops[order], scores[order]
    print(f"{args.users} users x {args.items} items x dim {args.dim}, {args.seen} seen, {args.heldout} held out, chunks of {args.chunk}")
    print(f"one process: {seconds:.1f} s (load {os.getloadavg()[0]:.1f}); ndcg@10 {expected['ndcg@10']:.6f}")
    for world in args.worlds:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder)
            load_before = os.getloadavg()[0]
            mp.spawn(rank_on, args=(world, out / "store", out, user_table, item_table, seen, heldout, args.chunk), nprocs=world)
            records = [torch.load(out / f"rank{rank}.pt") for rank in range(world)]
        metrics = records[0]["metrics"]
        difference = max(abs(metrics[name] - expected[name]) for name in expected)
        sharded_users = torch.cat([record["users"] for record in records])
        sharded_tops = torch.cat([record["tops"] for record in records])[sharded_users.argsort()]
        sharded_scores = torch.cat([record["scores"] for record in records])[sharded_users.argsort()]
        same = (sharded_tops == tops).all(1).double().mean().item()
        same_scores = (sharded_scores == scores).all(1).double().mean().item()
        block = RowBlocks(args.items, world).block_rows
        queries = (world - 1) * args.chunk * args.dim * 4
        candidates = args.chunk * world * min(max(KS), block) * 16
        exclusions = args.chunk * args.seen * 16 // world  # its block's share of every rank's seen items
        seconds = max(record["seconds"] for record in records)
        print(
            f"W={world}: max |diff| {difference:.1e}, same top-{max(KS)} items {same:.4f}, scores {same_scores:.4f}, {seconds:.1f} s "
            f"(load {load_before:.1f} before), received per chunk ~{(queries + candidates + exclusions) / 2**20:.2f} MiB "
            f"(queries {queries / 2**20:.2f}, candidates {candidates / 2**20:.2f}, seen {exclusions / 2**20:.2f}), "
            f"chunks per rank {[record['chunks'] for record in records]}"
        )


if __name__ == "__main__":
    main()
