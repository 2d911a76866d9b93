"""Two-stage recommendation on ML-100K: does re-ranking an MF retriever's candidates with NeuMF beat MF alone?

Trains the retriever (`experiment=ml100k_mf`) and the same NeuMF re-ranker twice, on negatives drawn
from the retriever's candidates (`sampler=retrieved`) and on uniform negatives, all on the default
split, then ranks the test split with each model alone and with each two-stage pair (`evaluate
retrieval.run_dir=...`): candidate recall, NDCG@10 and Recall@10, and milliseconds per 1,000 users,
for the ranking alone and through the serving API (top 10 of every user, every seen item hidden).

    .venv/bin/python bench/bench_two_stage.py --out /tmp/two_stage            # run folders are kept there
    .venv/bin/python bench/bench_two_stage.py --candidates 100 --reranker model=hybrid loss=bpr
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from recsys_lightning.config import PROJECT_ROOT, register_resolvers
from recsys_lightning.evaluate import evaluate_two_stage
from recsys_lightning.runs.checkpoint_file import find_checkpoint, read_run_metrics
from recsys_lightning.runs.trained_run import load_trained
from recsys_lightning.serving.service import RecommendationService, TwoStageService
from recsys_lightning.train import train

RETRIEVER = ["experiment=ml100k_mf"]
# NeuMF as the BPR preset had it (bench/RESULTS.md: test NDCG@10 0.263 with uniform negatives), 4 negatives per positive.
RERANKER = [
    "model=ncf",
    "model.hidden=[32,16]",
    "model.dropout=0.5",
    "loss=bpr",
    "optimizer.lr=3e-3",
    "sampler.num_negatives=4",
    "callbacks.early_stopping.patience=4",
]
QUIET = ["callbacks.progress_bar.refresh_rate=0", "projector.max_items=0"]


def compose_config(run_dir: Path, overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"paths.run_dir={run_dir}", "run_name=bench", *QUIET, *overrides])


def trained(run_dir: Path, overrides: list[str]) -> Path:
    """The run folder, trained unless it already holds a finished run (metrics.json)."""
    if not (run_dir / "metrics.json").exists():
        train(compose_config(run_dir, overrides))
    return run_dir


def serving_ms_per_1000_users(service: RecommendationService, repeats: int = 3) -> float:
    """Top 10 of every user through the serving API, best of `repeats`."""
    users = torch.arange(service.catalogue.num_users)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _chunk in service.recommend_in_chunks(users, 10):
            pass
        best = min(best, time.perf_counter() - start)
    return 1e6 * best / len(users)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="folder for the run folders (default: a new temporary one)")
    parser.add_argument("--candidates", type=int, default=200, help="retrieved candidates per user")
    parser.add_argument("--reranker", nargs="*", default=RERANKER, help="overrides of the re-ranker, both runs")
    args = parser.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="bench_two_stage_"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    n = args.candidates

    retriever = trained(out / "retriever", RETRIEVER)
    rerankers = {
        "retrieved": trained(
            out / "reranker_retrieved", [*args.reranker, "sampler=retrieved", f"sampler.run_dir={retriever}", f"sampler.candidates={n}"]
        ),
        "uniform": trained(out / "reranker_uniform", [*args.reranker, "sampler=uniform"]),
    }
    rows = []
    retrieval = RecommendationService(load_trained(find_checkpoint(retriever)))
    for negatives, run in rerankers.items():
        table, heading = evaluate_two_stage(run, retriever, n, accelerator="cpu")
        print(heading)
        reranker = load_trained(find_checkpoint(run))
        serving = [serving_ms_per_1000_users(retrieval), serving_ms_per_1000_users(RecommendationService(reranker))]
        serving.append(serving_ms_per_1000_users(TwoStageService(reranker, retrieval, n)))
        recorded = [read_run_metrics(retriever)["test/ndcg@10"], read_run_metrics(run)["test/ndcg@10"], float("nan")]
        names = ["MF alone", f"NeuMF ({negatives} negatives) alone", f"MF top {n} -> NeuMF ({negatives} negatives)"]
        table = table.assign(row=names, **{"metrics.json ndcg@10": recorded, "serving ms/1k users": serving})
        rows.append(table if not rows else table.iloc[1:])
    summary = pd.concat(rows)[["row", f"recall@{n}", "ndcg@10", "recall@10", "metrics.json ndcg@10", "ms/1k users", "serving ms/1k users"]]
    print(f"\nML-100K test split, seed 42, {torch.get_num_threads()} torch thread(s); run folders in {out}")
    print(summary.to_string(index=False, float_format=lambda value: f"{value:.4f}"))


if __name__ == "__main__":
    main()
