"""The memory estimate (recsys_lightning/memory_estimate.py) against the peak resident memory of real runs.

    .venv/bin/python bench/bench_memory_estimate.py            # the default run and larger configs
    .venv/bin/python bench/bench_memory_estimate.py --big      # also model.dim=65536 (needs ~12 GiB free)

Each config trains one epoch of a few batches, validates and tests through the entry point on the CPU,
under `/usr/bin/time -v`; its estimate is computed here for the same config and the data's sizes.
Printed per config: estimate, measured peak RSS, and their ratio (the estimate is meant to be within 2x).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from recsys_lightning.config import PROJECT_ROOT, register_resolvers
from recsys_lightning.memory_estimate import GIB, config_sizes, estimate

# One epoch of a few batches is enough: a step's activations and an evaluation chunk peak at once.
SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=5", "trainer.accelerator=cpu", "projector.max_items=0"]
CONFIGS = [
    [],  # the default main job: MF, BPR, uniform, dim 64, batch 4096, ML-100K
    ["model.dim=1024", "sampler.num_negatives=16"],
    ["model=ncf"],
    ["model=ncf", "model.hidden=[1024,512]", "sampler.num_negatives=8"],
    ["model=hybrid", "model.dim=512", "loss=full_softmax"],
    # a larger catalogue: evaluation on a sample of users, so the bench stays minutes
    ["data=synthetic", "data.num_users=100000", "data.num_items=20000", "data.num_interactions=1000000", "model.dim=256"]
    + ["data.val_users=2000", "run_test=false"],
]
BIG = [["model.dim=65536"]]


def sizes(overrides: list[str]) -> tuple[int, int]:
    """Users and items the run will have: from the config for synthetic data, else from loading it."""
    cfg = composed(overrides)
    users, items = config_sizes(cfg)
    if users and items:
        return users, items
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    return datamodule.training_data.num_users, datamodule.training_data.num_items


def composed(overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["paths.run_dir=.", "run_name=bench", *overrides])


def measured_peak(overrides: list[str]) -> float:
    """Peak RSS in GiB of the training entry point for `overrides` (the memory check itself off)."""
    with tempfile.TemporaryDirectory() as run_dir:
        command = ["/usr/bin/time", "-v", sys.executable, "-m", "recsys_lightning.train", *SHORT, *overrides]
        command += ["memory_limit_gib=0", f"hydra.run.dir={run_dir}", "callbacks.progress_bar.refresh_rate=0"]
        result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    if result.returncode != 0 or peak is None:
        raise SystemExit(f"{' '.join(overrides)} failed:\n{result.stderr[-2000:]}")
    return int(peak.group(1)) * 1024 / GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", action="store_true", help="also model.dim=65536 (about 12 GiB)")
    parser.add_argument("--only", type=int, nargs="*", help="run these configs of the list only (0 = the defaults)")
    args = parser.parse_args()
    print(f"{'config':70s} {'users':>7s} {'items':>6s} {'estimate':>9s} {'peak RSS':>9s} {'ratio':>6s}")
    configs = CONFIGS + (BIG if args.big else [])
    for overrides in [configs[index] for index in args.only] if args.only else configs:
        users, items = sizes(overrides)
        predicted = sum(component.bytes for component in estimate(composed(overrides), users, items)) / GIB
        peak = measured_peak(overrides)
        name = " ".join(overrides) or "(defaults)"
        print(f"{name[:70]:70s} {users:7d} {items:6d} {predicted:8.2f}G {peak:8.2f}G {predicted / peak:6.2f}", flush=True)


if __name__ == "__main__":
    main()
