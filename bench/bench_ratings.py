"""Rating prediction on ML-100K: the ml100k_ratings preset against the baselines it must beat, on the same split.

Baselines, closed form on the training ratings: the global mean, and regularised biases mu + b_u + b_i
(Koren 2010, "Factor in the neighbors", section 2.1: alternating b_i = sum(r - mu - b_u) / (lambda + n_i)
and b_u = sum(r - mu - b_i) / (lambda + n_u)), lambda chosen on validation RMSE. The preset is trained
through the entry point's `train`. Prints validation and test RMSE and MAE, and training seconds.

    .venv/bin/python bench/bench_ratings.py                                          # baselines + experiment=ml100k_ratings
    .venv/bin/python bench/bench_ratings.py --runs "experiment=ml100k_ratings model.dim=32"   # other override sets
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from recsys_lightning.config import PROJECT_ROOT, register_resolvers
from recsys_lightning.train import train

BIAS_LAMBDAS = (1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 25.0)  # > 0: an item without training ratings gets b_i = 0
BIAS_SWEEPS = 15  # alternations; the biases move by < 1e-4 after about ten


def compose_config(*overrides: str, run_dir: str):
    register_resolvers()
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"paths.run_dir={run_dir}", "run_name=bench", *overrides])


def errors(predicted: np.ndarray, ratings: np.ndarray) -> dict[str, float]:
    return {"rmse": float(np.sqrt(np.mean((predicted - ratings) ** 2))), "mae": float(np.mean(np.abs(predicted - ratings)))}


def fit_biases(users, items, ratings, num_users, num_items, strength: float) -> tuple[float, np.ndarray, np.ndarray]:
    mean = float(ratings.mean())
    user_bias, item_bias = np.zeros(num_users), np.zeros(num_items)
    user_count, item_count = np.bincount(users, minlength=num_users), np.bincount(items, minlength=num_items)
    for _ in range(BIAS_SWEEPS):
        item_bias = np.bincount(items, ratings - mean - user_bias[users], num_items) / (strength + item_count)
        user_bias = np.bincount(users, ratings - mean - item_bias[items], num_users) / (strength + user_count)
    return mean, user_bias, item_bias


def baselines(datamodule) -> list[dict]:
    interactions, split = datamodule.interactions, datamodule.split
    parts = {"train": split.train, "val": split.valid, "test": split.test}
    users, items = ({stage: column[rows] for stage, rows in parts.items()} for column in (interactions.users, interactions.items))
    ratings = {stage: interactions.ratings[rows].astype(np.float64) for stage, rows in parts.items()}
    mean = ratings["train"].mean()
    rows = [{"name": "global mean", **figures({stage: np.full(len(ratings[stage]), mean) for stage in ("val", "test")}, ratings)}]
    best = None
    for strength in BIAS_LAMBDAS:
        mu, user_bias, item_bias = fit_biases(
            users["train"], items["train"], ratings["train"], interactions.num_users, interactions.num_items, strength
        )
        predicted = {stage: mu + user_bias[users[stage]] + item_bias[items[stage]] for stage in ("val", "test")}
        row = {"name": f"biases (lambda={strength:g})", **figures(predicted, ratings)}
        if best is None or row["val/rmse"] < best["val/rmse"]:
            best = row
    return rows + [best]


def figures(predicted: dict[str, np.ndarray], ratings: dict[str, np.ndarray]) -> dict[str, float]:
    return {f"{stage}/{name}": value for stage, values in predicted.items() for name, value in errors(values, ratings[stage]).items()}


def trained(overrides: str) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose_config(*overrides.split(), "projector.max_items=0", "callbacks.progress_bar.refresh_rate=0", run_dir=run_dir)
        start = time.perf_counter()
        metrics = train(cfg)
        wall = time.perf_counter() - start
    figures = {name: metrics[name] for name in ("val/rmse", "val/mae", "test/rmse", "test/mae")}
    extra = f"best epoch {metrics['best_epoch']} of {metrics['epochs']}, {metrics['train_seconds']:.1f} s training, {wall:.1f} s wall"
    return {"name": overrides, **figures, "note": extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", default=["experiment=ml100k_ratings"], help="override sets to train, one string each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        datamodule = instantiate(compose_config("experiment=ml100k_ratings", run_dir=run_dir).data)
    datamodule.setup("fit")
    rows = baselines(datamodule) + [trained(overrides) for overrides in args.runs]
    print("| setup | val RMSE | val MAE | test RMSE | test MAE | |\n|---|---|---|---|---|---|")
    for row in rows:
        figures = " | ".join(f"{row[name]:.4f}" for name in ("val/rmse", "val/mae", "test/rmse", "test/mae"))
        print(f"| {row['name']} | {figures} | {row.get('note', 'closed form')} |")


if __name__ == "__main__":
    main()
