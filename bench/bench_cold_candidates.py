"""The floor under bench/RESULTS.md's cold-items table: how many new items valid and test rank with
eval.candidates=cold, and the NDCG@10 and recall@10 a uniformly random ranking expects, with either value of
eval.candidates, on ML-100K's cold_items split (seed 42, as the table's runs).

    .venv/bin/python bench/bench_cold_candidates.py

A user with r held-out items among n rankable ones (the candidates less the items they have seen) finds one
at each rank with probability r / n: E[DCG@K] = r / n * sum_{j <= min(K, n)} 1 / log2(j + 1), over the
IDCG of min(K, r) hits; E[recall@K] = min(K, n) / n. Averaged over the part's users, as the metrics are.
"""

from __future__ import annotations

import torch
from hydra import compose, initialize_config_dir

from recsys_lightning.build import build_datamodule
from recsys_lightning.config import PROJECT_ROOT, register_resolvers

K = 10


def random_ranking_expectation(datamodule, part: str) -> tuple[int, float, float]:
    """(candidates, expected NDCG@K, expected recall@K) of ranking `part`'s users' unseen candidates at random."""
    chunks = datamodule.ranking_chunks(part)
    candidates = chunks[0].candidates
    discounts = 1 / torch.log2(torch.arange(2, datamodule.num_items + 2, dtype=torch.float64))
    ndcg, recall, users = 0.0, 0.0, 0
    for chunk in chunks.chunks:
        relevant = torch.bincount(chunk.heldout_rows, minlength=len(chunk.users)).double()
        mask = torch.ones(len(chunk.users), datamodule.num_items, dtype=torch.bool)  # one chunk at a time
        if candidates is not None:
            mask &= candidates
        mask[chunk.exclude_rows, chunk.exclude_items] = False
        rankable = mask.sum(1).double()
        shown = rankable.clamp(max=K).long()
        dcg = relevant / rankable * discounts.cumsum(0)[shown - 1]
        ideal = discounts.cumsum(0)[relevant.clamp(max=K).long() - 1]
        ndcg += float((dcg / ideal).sum())
        recall += float((shown / rankable).sum())
        users += len(chunk.users)
    return (int(candidates.sum()) if candidates is not None else datamodule.num_items), ndcg / users, recall / users


def main() -> None:
    register_resolvers()
    print(f"{'candidates':<10} {'part':<5} {'ranked items':>12} {'random NDCG@10':>15} {'random recall@10':>17}")
    for eval_candidates in ("all", "cold"):
        with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", [f"eval.candidates={eval_candidates}", "data.split=cold_items", "paths.run_dir=.", "run_name=bench"])
        datamodule = build_datamodule(cfg.data)
        datamodule.setup("fit")
        for part in ("valid", "test"):
            items, ndcg, recall = random_ranking_expectation(datamodule, part)
            print(f"{eval_candidates:<10} {part:<5} {items:>12} {ndcg:>15.4f} {recall:>17.4f}")


if __name__ == "__main__":
    main()
