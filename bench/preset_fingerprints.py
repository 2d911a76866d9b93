"""The seeded metrics of the main job and every preset after a few epochs: a refactor's before-and-after check.

A behaviour-preserving change must leave these numbers identical (same seed, same data, same float
order), so run this on the commit before and the commit after and compare the two outputs with `diff`.
Each run goes through the real entry point in a fresh interpreter and a temporary folder; NeuMF's
pre-trained preset starts from the GMF and MLP presets' runs, as a user runs it. About 5 minutes on
2 cores with the default 2 epochs (the NeuMF presets' exact softmax dominates).

    .venv/bin/python bench/preset_fingerprints.py > before.txt      # on the old commit
    .venv/bin/python bench/preset_fingerprints.py > after.txt       # on the new one; diff before.txt after.txt
    .venv/bin/python bench/preset_fingerprints.py --epochs 1 --presets main ml100k_mf
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(path.stem for path in (ROOT / "conf" / "experiment").glob("*.yaml"))
PRETRAINED = "ml100k_ncf_pretrained"
PRETRAINED_FROM = ("ml100k_ncf_gmf", "ml100k_ncf_mlp")
SHOWN = ("best_epoch", "epochs", "val/ndcg@10", "test/ndcg@10", "test/recall@10", "val/rmse", "test/rmse")


def train(name: str, epochs: int, scratch: Path, extra: list[str]) -> tuple[Path, dict]:
    """One run of `name` (a preset, or `main` for the README's main job); its folder and metrics.json."""
    run_dir = scratch / name
    overrides = [] if name == "main" else [f"experiment={name}"]
    command = [
        sys.executable,
        "-m",
        "recsys_lightning.train",
        f"hydra.run.dir={run_dir}",
        f"trainer.max_epochs={epochs}",
        *overrides,
        *extra,
    ]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"{name}: exit {finished.returncode}: {finished.stderr.strip().splitlines()[-1:]}")
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--presets", nargs="*", default=["main", *PRESETS], choices=["main", *PRESETS])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folders: dict[str, Path] = {}
        names = list(args.presets)
        if PRETRAINED in names:  # its two starting runs first, whether asked for or not
            names = [name for name in names if name not in PRETRAINED_FROM and name != PRETRAINED]
            names += [*PRETRAINED_FROM, PRETRAINED]
        for name in names:
            extra = [f"pretrained_from=[{folders[PRETRAINED_FROM[0]]},{folders[PRETRAINED_FROM[1]]}]"] if name == PRETRAINED else []
            folders[name], metrics = train(name, args.epochs, Path(scratch), extra)
            shown = "  ".join(f"{key} {metrics[key]!r}" for key in SHOWN if key in metrics)
            print(f"{name}: {shown}", flush=True)


if __name__ == "__main__":
    main()
