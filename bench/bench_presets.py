"""Each tuned preset beside the untuned defaults of its model on ML-100K: a preset has to beat them on validation.

Prints, per run, validation and test NDCG@10 (RMSE for rating prediction), test Recall@10, the best
epoch, the epochs run and the training seconds to the best epoch; then, per preset, whether it beats
its model's defaults on validation. NeuMF's pre-training is run as a user runs it: the GMF and MLP
presets, then `experiment=ml100k_ncf_pretrained` from both (its time is the three runs together).
Not a test: it trains about ten models, 10-15 minutes on 2 cores; timings need an otherwise idle machine.

    .venv/bin/python bench/bench_presets.py
    .venv/bin/python bench/bench_presets.py --presets ml100k_ncf ml100k_hybrid     # a subset
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

from hydra import compose, initialize_config_dir

from recsys_lightning.config import PROJECT_ROOT, register_resolvers
from recsys_lightning.train import train

# preset -> the overrides a user types to get the same model untuned
DEFAULTS_OF = {
    "ml100k_mf": "",
    "ml100k_mf_softmax": "",
    "ml100k_hybrid": "model=hybrid",
    "ml100k_ncf": "model=ncf",
    "ml100k_ncf_pretrained": "model=ncf",
    "ml100k_ratings": "loss=mse",
}
PRETRAINING = ("ml100k_ncf_gmf", "ml100k_ncf_mlp")


def run(overrides: list[str], scratch: str) -> dict[str, Any]:
    run_dir = tempfile.mkdtemp(dir=scratch)
    register_resolvers()
    quiet = ["callbacks.progress_bar.refresh_rate=0", "projector.max_items=0"]
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.run_dir={run_dir}", "run_name=bench", *overrides, *quiet])
    metrics = train(cfg)
    monitor = str(cfg.monitor.metric)
    return {
        "name": " ".join(overrides) or "(defaults)",
        "run_dir": run_dir,
        "monitor": monitor,
        "val": metrics[monitor],
        "test": metrics["test/" + monitor.removeprefix("val/")],
        "recall": metrics.get("test/recall@10", float("nan")),
        "best_epoch": metrics["best_epoch"],
        "epochs": metrics["epochs"],
        "seconds": metrics["train_seconds"] * (metrics["best_epoch"] + 1) / metrics["epochs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=list(DEFAULTS_OF), choices=list(DEFAULTS_OF))
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="bench_presets_")
    defaults: dict[str, dict[str, Any]] = {}
    rows, verdicts = [], []
    for preset in args.presets:
        base = DEFAULTS_OF[preset]
        if base not in defaults:
            defaults[base] = run(base.split() if base else [], scratch)
            rows.append(defaults[base])
        if preset == "ml100k_ncf_pretrained":
            stages = [run([f"experiment={stage}"], scratch) for stage in PRETRAINING]
            rows += stages
            tuned = run([f"experiment={preset}", f"pretrained_from=[{stages[0]['run_dir']},{stages[1]['run_dir']}]"], scratch)
            tuned["name"] = f"experiment={preset} (from the two above)"
            tuned["seconds"] += sum(stage["seconds"] for stage in stages)
        else:
            tuned = run([f"experiment={preset}"], scratch)
        rows.append(tuned)
        lower = tuned["monitor"].endswith(("rmse", "mae"))
        beats = tuned["val"] < defaults[base]["val"] if lower else tuned["val"] > defaults[base]["val"]
        verdict = "beats" if beats else "DOES NOT BEAT"
        verdicts.append(f"{preset:24s} {tuned['val']:.4f} vs {defaults[base]['val']:.4f} ({base or 'defaults'}): {verdict}")

    print(f"\n{'run':62s} {'monitor':12s} {'val':>7s} {'test':>7s} {'test R@10':>9s} {'best':>4s} {'epochs':>6s} {'s to best':>9s}")
    for row in rows:
        print(
            f"{row['name'][:62]:62s} {row['monitor']:12s} {row['val']:7.4f} {row['test']:7.4f} {row['recall']:9.4f} "
            f"{row['best_epoch']:4d} {row['epochs']:6d} {row['seconds']:9.1f}"
        )
    print("\nPreset against its model's defaults, on validation:")
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
