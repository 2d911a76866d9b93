"""Memory per DDP rank as a formula of interactions N, users U, items I, embedding width d and ranks W,
for today's path (every rank sets up all the data) and for the prepared path of issue 24 (rank r of W
reads its share: about N/W rows and U/W users; item-sized arrays and the model tables stay global).

    .venv/bin/python bench/scale_memory.py                      # the on-paper table: 1B x 100M users x 10M items
    .venv/bin/python bench/scale_memory.py --interactions 8e6 --users 2e5 --items 5e4 --worlds 1 2 4

bench/bench_scale.py prints `today_rank_bytes` beside each measured peak. Every factor is what the code
allocates (bytes per interaction, per user, per item); the comments name the arrays, so a change in the
code shows here as a factor to revise. Figures are the data- and model-dependent peak: what a process
holds beyond its imports (about 0.45 GiB of Python, torch and Lightning).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

FLOAT = 4
TRAIN_SHARE = 0.8  # data.split_ratios' default train share: the arrays of training pairs hold this share of N

# A run has two phases: the data's setup, before the model exists (train.py sets up the data first, to size
# the model), and training, with the model, the training pairs, the ranking chunks and an evaluation chunk.
# Arrays above glibc's mmap threshold (32 MiB: int64 arrays of more than 4M rows) go back to the system when
# freed, so the peak is the larger phase; smaller ones stay in the heap, and the phases add up. The
# bench prints both bounds.

# Today's path, InteractionDataModule.setup on every rank: at its end these are alive at once. Rows already
# in timestamp order with no repeated pair (synthetic data) make one frame: pandas' copy-on-write shares it
# with latest_per_pair's result and the positives; rows to reorder (CSV, MovieLens) add up to two copies.
TODAY_SETUP_PER_INTERACTION = {
    "the loaded frame: user, item int64, rating float32, timestamp float64": 28,
    "Interactions.users, .items (int64; ratings and timestamps are views of the frame)": 16,
    "split row indices (int64)": 8,
    "train/valid/test CSRs: indices int64 + values float32": 12,
    "TrainingPositives keys + gap_keys (int64, train rows)": 16 * TRAIN_SHARE,
    "Catalogue.seen: indices int64 + part int8": 9,
    # Catalogue.from_parts: each part's coordinates (rows, items int64, codes int8), their concatenation,
    # from_pairs' keys, its argsort and the sort's workspace
    "Catalogue build transients": 17 + 17 + 8 + 8 + 16,
}
# Today's path while training: what setup keeps (the frame's rating and timestamp columns with it), every
# rank's copy of all training pairs and its randperm over all of them (EpochBatchSampler).
TODAY_STEADY_PER_INTERACTION = {
    "Interactions (28), split (8), CSRs (12), TrainingPositives, Catalogue.seen (9)": 28 + 8 + 12 + 16 * TRAIN_SHARE + 9,
    "training pairs: user, item int64, rating float32 (train rows)": 20 * TRAIN_SHARE,
    "the epoch's randperm (int64, train rows)": 8 * TRAIN_SHARE,
}
# Ranking chunks, shared out among the ranks: valid hides each ranked user's training items (row, item
# int64: 16 per train row) and holds its valid items (20 per valid row), for the share of users validation
# ranks (data.val_users); test hides train + valid items and holds the test items, when the run tests.
VALID_CHUNKS_PER_INTERACTION = 16 * TRAIN_SHARE + 20 * 0.1
TEST_CHUNKS_PER_INTERACTION = 16 * 0.9 + 20 * 0.1
# indptr of three CSRs and the catalogue's, raw user ids, the split's per-user counts and ends
TODAY_PER_USER = 8 * 4 + 8 + 8 * 3
# raw item ids, TrainingPositives.item_counts, Catalogue.popularity, the item metadata frame
TODAY_PER_ITEM = 8 * 4 + 8

# The prepared path as issue 24 specifies it (recsys_lightning/prepared/, /work/briefs/share24.md): not
# measured yet. Per row of the rank's share:
# - reading its parts: each part's columns (user, item int64, rating float32, timestamp float64, part int8,
#   row int64: 37 bytes) as Arrow buffers and as numpy, then sorted by row (argsort 8 + a sorted copy 37);
# - training: the columns kept (37), three local CSRs (12), TrainingPositives (16 per training row), the
#   training pairs and the epoch permutation (28 per training row); its ranking chunks come on top, as today.
PREPARED_READ_PER_ROW = 37 + 37 + 8 + 37
PREPARED_STEADY_PER_ROW = 37 + 12 + (16 + 28) * TRAIN_SHARE
PREPARED_PER_USER = 8 * 3 + 8 + 8  # local indptrs, validation users, the val_users hash
PREPARED_PER_ITEM = 8 * 3 + 8  # global item counts, popularity, raw item ids (id map) and the local counts

# Model: each (user or item) row of width d (+1 with MF's bias) as float32 weight, dense gradient and
# Adam's two moments; DDP (W > 1) adds its gradient buckets, one more copy (Lightning leaves
# gradient_as_bucket_view off). Sparse gradients (optimizer=sparse_adam) keep no table-sized gradient and
# no bucket: weight and the two moments.
WEIGHT_COPIES = 4
DDP_BUCKET_COPIES = 1
# An evaluation chunk: chunk x I scores and the masked copy the ranking sorts (memory_estimate.py counts 3
# copies as its upper bound; 2 matches bench_scale's measurements).
EVALUATION_COPIES = 2


@dataclass(frozen=True)
class Sizes:
    interactions: int
    users: int
    items: int
    dim: int = 64
    bias: bool = True
    eval_chunk_size: int = 1024
    eval_max_scores: int = 2**27
    validated_share: float = 1.0  # share of the users validation ranks: data.val_users / users, at most 1
    tested: bool = True  # run_test: the test chunks are built
    sparse_gradients: bool = False  # model.sparse_gradients (optimizer=sparse_adam)


def model_bytes(sizes: Sizes, world: int) -> int:
    """Embedding tables, gradients, Adam state (and DDP buckets): full on every rank (issue 25 shards them)."""
    width = sizes.dim + int(sizes.bias)
    if sizes.sparse_gradients:
        copies = WEIGHT_COPIES - 1
    else:
        copies = WEIGHT_COPIES + (DDP_BUCKET_COPIES if world > 1 else 0)
    return (sizes.users + sizes.items) * width * FLOAT * copies


def evaluation_bytes(sizes: Sizes) -> int:
    chunk = max(1, min(sizes.eval_chunk_size, sizes.eval_max_scores // max(sizes.items, 1)))
    return chunk * sizes.items * FLOAT * EVALUATION_COPIES


def chunk_bytes_per_interaction(sizes: Sizes, world: int) -> float:
    """A rank's 1/W of the valid and test ranking chunks."""
    valid = VALID_CHUNKS_PER_INTERACTION * min(1.0, sizes.validated_share)
    return (valid + (TEST_CHUNKS_PER_INTERACTION if sizes.tested else 0)) / world


def today_setup_bytes(sizes: Sizes) -> int:
    """Every rank runs the whole setup: nothing here depends on W."""
    per_interaction = sum(TODAY_SETUP_PER_INTERACTION.values())
    return int(per_interaction * sizes.interactions + TODAY_PER_USER * sizes.users + TODAY_PER_ITEM * sizes.items)


def today_data_bytes(sizes: Sizes, world: int) -> int:
    """The data a rank holds while training: all of it but its 1/W of the ranking chunks."""
    per_interaction = sum(TODAY_STEADY_PER_INTERACTION.values()) + chunk_bytes_per_interaction(sizes, world)
    return int(per_interaction * sizes.interactions + TODAY_PER_USER * sizes.users + TODAY_PER_ITEM * sizes.items)


def prepared_read_bytes(sizes: Sizes, world: int) -> int:
    return int(PREPARED_READ_PER_ROW * sizes.interactions / world + PREPARED_PER_ITEM * sizes.items)


def prepared_data_bytes(sizes: Sizes, world: int) -> int:
    """A rank's share while training: its rows, users and chunks fall as 1/W; the item-sized arrays do not."""
    rows, users = sizes.interactions / world, sizes.users / world
    per_row = PREPARED_STEADY_PER_ROW + chunk_bytes_per_interaction(sizes, 1)
    return int(per_row * rows + PREPARED_PER_USER * users + PREPARED_PER_ITEM * sizes.items)


def today_rank_bytes(sizes: Sizes, world: int) -> tuple[int, int]:
    """(larger phase, both phases): a rank's peak when freed setup memory goes back to the system, and when it stays."""
    setup = today_setup_bytes(sizes)
    training = today_data_bytes(sizes, world) + model_bytes(sizes, world) + evaluation_bytes(sizes)
    return max(setup, training), setup + training


def prepared_rank_bytes(sizes: Sizes, world: int) -> tuple[int, int]:
    read = prepared_read_bytes(sizes, world)
    training = prepared_data_bytes(sizes, world) + model_bytes(sizes, world) + evaluation_bytes(sizes)
    return max(read, training), read + training


def table(sizes: Sizes, worlds: list[int]) -> str:
    """Markdown: per W, each part of a rank's memory on both paths, in GiB."""
    gib = 2**30
    lines = [
        f"N={sizes.interactions:,} interactions, U={sizes.users:,} users, I={sizes.items:,} items, d={sizes.dim}"
        f"{' + bias' if sizes.bias else ''}, Adam, dense gradients; GiB per rank",
        "",
        "| W | today: setup | today: data training | prepared: read | prepared: data training "
        "| model + grads + Adam (+DDP buckets) | eval chunk | today peak (larger phase) | prepared peak (larger phase) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for world in worlds:
        figures = (
            today_setup_bytes(sizes),
            today_data_bytes(sizes, world),
            prepared_read_bytes(sizes, world),
            prepared_data_bytes(sizes, world),
            model_bytes(sizes, world),
            evaluation_bytes(sizes),
            today_rank_bytes(sizes, world)[0],
            prepared_rank_bytes(sizes, world)[0],
        )
        lines.append(f"| {world} | " + " | ".join(f"{figure / gib:,.2f}" for figure in figures) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=float, default=1e9)
    parser.add_argument("--users", type=float, default=1e8)
    parser.add_argument("--items", type=float, default=1e7)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--worlds", type=int, nargs="+", default=[8, 64, 512])
    args = parser.parse_args()
    sizes = Sizes(int(args.interactions), int(args.users), int(args.items), args.dim)
    print(table(sizes, args.worlds))
    gib = 2**30
    print(f"\nprepare (one process, once: today's setup in memory): {today_setup_bytes(sizes) / gib:,.0f} GiB")
    gradient = model_bytes(sizes, 1) // WEIGHT_COPIES
    print(f"dense gradients all-reduced every step: {gradient / gib:,.1f} GiB (a ring sends and receives about twice that per rank)")


if __name__ == "__main__":
    main()
