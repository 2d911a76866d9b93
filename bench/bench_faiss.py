"""FAISS on a 1M-item catalogue: IVF recall@k against exact search, and query latency.

Item vectors have MF's shape after bias folding ([q_i, 1, b_i], clustered as learned embeddings are);
user queries ([p_u, b_u, 1]) come from the same clusters. Exact top-k is `IndexFlatIP`; the model's own
path (one matmul + topk in torch) is timed beside it, and IVF at several nprobe.

    .venv/bin/python bench/bench_faiss.py                       # 1M items, dim 64, 1000 queries
    .venv/bin/python bench/bench_faiss.py --items 2000000 --nlist 8192
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from recsys_lightning.serving.vector_index import ItemVectorIndex, import_faiss


def mf_like_vectors(num_items: int, num_users: int, dim: int, clusters: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=generator) * 0.3

    def draw(count: int) -> torch.Tensor:
        members = torch.randint(clusters, (count,), generator=generator)
        return centres[members] + 0.3 * torch.randn(count, dim, generator=generator)

    items, users = draw(num_items), draw(num_users)
    item_bias = 0.1 * torch.randn(num_items, 1, generator=generator)
    user_bias = 0.1 * torch.randn(num_users, 1, generator=generator)
    items = torch.cat([items, torch.ones(num_items, 1), item_bias], 1)
    users = torch.cat([users, user_bias, torch.ones(num_users, 1)], 1)
    return users, items


def timed(function, repeats: int = 1) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def recall_against(exact: torch.Tensor, approximate: torch.Tensor) -> float:
    """Share of the exact top-k found by the approximate top-k, averaged over queries."""
    found = (approximate.unsqueeze(2) == exact.unsqueeze(1)).any(1).float()
    return found.mean().item()


def single_query_ms(index: ItemVectorIndex, queries: torch.Tensor, k: int, count: int = 100) -> float:
    times = []
    for row in range(count):
        start = time.perf_counter()
        index.search(queries[row : row + 1], k)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64])
    args = parser.parse_args()
    faiss = import_faiss()
    print(
        f"{args.items:,} items, dim {args.dim} (+2 for the folded biases), {args.queries} queries, k={args.k}, "
        f"{torch.get_num_threads()} torch threads, {faiss.omp_get_max_threads()} faiss threads"
    )
    queries, items = mf_like_vectors(args.items, args.queries, args.dim, clusters=1024, seed=0)

    seconds, torch_top = timed(lambda: (queries @ items.T).topk(args.k, dim=1).indices, repeats=2)
    print(f"torch matmul + topk (the model's path): {1000 * seconds / args.queries:.3f} ms/query in a batch")

    build, flat = timed(lambda: ItemVectorIndex.build(items, "flat"))
    seconds, (_, exact) = timed(lambda: flat.search(queries, args.k), repeats=2)
    exact_ms = 1000 * seconds / args.queries
    print(
        f"flat (exact): build {build:.1f} s, {exact_ms:.3f} ms/query in a batch, "
        f"{single_query_ms(flat, queries, args.k):.2f} ms single query, agrees with torch on "
        f"{recall_against(torch_top, exact):.4f} of the top-{args.k}"
    )

    build, ivf = timed(lambda: ItemVectorIndex.build(items, "ivf", nlist=args.nlist))
    print(f"ivf nlist={args.nlist}: build (k-means + add) {build:.1f} s")
    print(f"| nprobe | recall@{args.k} vs exact | ms/query (batch) | ms single query | speed-up vs flat (batch) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for nprobe in args.nprobe:
        ivf.index.nprobe = nprobe
        seconds, (_, found) = timed(lambda: ivf.search(queries, args.k), repeats=2)
        batch_ms = 1000 * seconds / args.queries
        print(
            f"| {nprobe} | {recall_against(exact, found):.4f} | {batch_ms:.3f} | "
            f"{single_query_ms(ivf, queries, args.k):.3f} | {exact_ms / batch_ms:.1f}x |"
        )


if __name__ == "__main__":
    main()
