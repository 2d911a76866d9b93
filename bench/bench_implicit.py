"""Our presets and baselines against `implicit`'s ALS and BPR on exactly the same ML-100K split, scored by our metric code.

implicit gets a small grid (factors 64) chosen on validation NDCG@10; ours are the tuned presets and the
closed-form baselines. Prints val and test NDCG@10, test Recall@10, the epoch of the best validation
point and the wall time to it (training seconds x (best epoch + 1) / epochs run).

    pip install implicit        # benchmark dependency only
    .venv/bin/python bench/bench_implicit.py                                    # every preset and baseline
    .venv/bin/python bench/bench_implicit.py --runs experiment=ml100k_mf model=ease   # a subset: one override set each
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time

import numpy as np
import scipy.sparse as sp
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from recsys_lightning.config import PROJECT_ROOT, register_resolvers
from recsys_lightning.metrics import RankingMetrics
from recsys_lightning.ranking import top_k_unseen
from recsys_lightning.train import train

ALS_GRID = {"regularization": [1.0, 5.0, 10.0, 20.0], "alpha": [1.0, 5.0], "iterations": [15]}
RUNS = [
    "experiment=ml100k_mf",
    "experiment=ml100k_mf_softmax",
    "experiment=ml100k_hybrid",
    "experiment=ml100k_ncf",
    "model=popularity",
    "model=itemknn",
    "model=ease",
]
BPR_GRID = {"learning_rate": [0.01, 0.05], "regularization": [0.001, 0.01], "iterations": [100, 300]}


def compose_config(*overrides: str, run_dir: str):
    register_resolvers()
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"paths.run_dir={run_dir}", "run_name=bench", *overrides])


def score_factors(user_factors: np.ndarray, item_factors: np.ndarray, loader) -> dict[str, float]:
    """Rank with the project's own top-K, exclusion and metric code, as RecommenderModule does."""
    metrics = RankingMetrics((10, 20))
    users_table, items_table = torch.from_numpy(user_factors).float(), torch.from_numpy(item_factors).float()
    for chunk in loader:
        top = top_k_unseen(users_table[chunk.users] @ items_table.T, chunk.exclude_rows, chunk.exclude_items, metrics.max_k)
        metrics.update_ranked(top, chunk, items_table.shape[0])
    return {name: value.item() for name, value in metrics.compute().items()}


def best_implicit(name: str, build, grid: dict, train_matrix, datamodule) -> dict:
    best = None
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid.keys(), values))
        model = build(params)
        start = time.perf_counter()
        model.fit(train_matrix, show_progress=False)
        seconds = time.perf_counter() - start
        valid = score_factors(model.user_factors, model.item_factors, datamodule.val_dataloader())
        if best is None or valid["ndcg@10"] > best["valid"]["ndcg@10"]:
            test = score_factors(model.user_factors, model.item_factors, datamodule.test_dataloader())
            best = {"name": name, "params": params, "valid": valid, "test": test, "seconds": seconds}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", default=RUNS, help="override sets, one per run, keys separated by commas")
    args = parser.parse_args()
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    scratch = tempfile.mkdtemp(prefix="bench_implicit_")
    cfg = compose_config(run_dir=scratch)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    train_pairs = datamodule.train_positives
    rows = torch.repeat_interleave(torch.arange(train_pairs.num_users), train_pairs.counts()).numpy()
    train_matrix = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, train_pairs.indices.numpy())),
        shape=(datamodule.num_users, datamodule.num_items),
    )

    results = [
        best_implicit(
            "implicit ALS", lambda p: AlternatingLeastSquares(factors=64, random_state=0, **p), ALS_GRID, train_matrix, datamodule
        ),
        best_implicit(
            "implicit BPR", lambda p: BayesianPersonalizedRanking(factors=64, random_state=0, **p), BPR_GRID, train_matrix, datamodule
        ),
    ]
    for run in args.runs:
        overrides = run.split(",")
        run_dir = tempfile.mkdtemp(dir=scratch)
        metrics = train(compose_config(*overrides, "callbacks.progress_bar.refresh_rate=0", "projector.max_items=0", run_dir=run_dir))
        seconds_to_best = metrics["train_seconds"] * (metrics["best_epoch"] + 1) / metrics["epochs"]
        results.append(
            {
                "name": f"ours {run}",
                "params": {"best_epoch": metrics["best_epoch"], "epochs": metrics["epochs"]},
                "seconds": seconds_to_best,
                "valid": {"ndcg@10": metrics["val/ndcg@10"]},
                "test": {"ndcg@10": metrics["test/ndcg@10"], "recall@10": metrics["test/recall@10"]},
            }
        )

    print(f"\nML-100K, {datamodule.split_kind} split {list(datamodule.split_ratios)}, seed {cfg.seed}; factors 64 for implicit")
    print(f"{'model':34s} {'val ndcg@10':>11s} {'test ndcg@10':>12s} {'test recall@10':>14s} {'s to best':>9s}  chosen")
    for row in results:
        print(
            f"{row['name']:34s} {row['valid']['ndcg@10']:11.4f} {row['test']['ndcg@10']:12.4f} "
            f"{row['test']['recall@10']:14.4f} {row['seconds']:9.1f}  {row['params']}"
        )
    ours = max((r for r in results if r["name"].startswith("ours")), key=lambda r: r["test"]["ndcg@10"], default=None)
    theirs = max((r for r in results if r["name"].startswith("implicit")), key=lambda r: r["test"]["ndcg@10"])
    if ours:
        ratio = ours["test"]["ndcg@10"] / theirs["test"]["ndcg@10"]
        print(f"best ours / best implicit test ndcg@10: {ours['test']['ndcg@10']:.4f} / {theirs['test']['ndcg@10']:.4f} = {ratio:.3f}")


if __name__ == "__main__":
    main()
