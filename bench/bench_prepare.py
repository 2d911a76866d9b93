"""Peak memory of `prepare` (issue 24): ML-100K and synthetic data of 2M and 8M interactions.

    .venv/bin/python bench/bench_prepare.py            # ML-100K, 2M and 8M (200k users x 50k items), 4 parts
    .venv/bin/python bench/bench_prepare.py --sizes 20000000

Each prepare runs through the entry point in its own process; its peak RSS comes from wait4, and the
data-dependent part is that minus the peak of a process that only imports what prepare imports.
prepare loads and splits with the single-process setup, so this is that setup's peak plus the writer's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

IMPORTS = "import recsys_lightning.prepare, recsys_lightning.data.movielens, recsys_lightning.data.synthetic"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def peak_rss_mib(command: list[str]) -> float:
    """The peak resident memory of `command`, a child of this process, in MiB (Linux reports KiB)."""
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        sys.exit(f"failed: {' '.join(command)}\n{process.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[2_000_000, 8_000_000], help="synthetic interaction counts")
    parser.add_argument("--parts", type=int, default=4)
    arguments = parser.parse_args()
    baseline = peak_rss_mib([sys.executable, "-c", IMPORTS])
    print(f"import-only peak RSS {baseline:.0f} MiB (load {os.getloadavg()[0]:.1f})")
    runs = [("ML-100K", 100_000, ["data=movielens"])] + [
        (f"synthetic {size:,}", size, ["data=synthetic", "data.num_users=200000", "data.num_items=50000", f"data.num_interactions={size}"])
        for size in arguments.sizes
    ]
    for name, interactions, overrides in runs:
        with tempfile.TemporaryDirectory() as folder:
            arguments_of_run = [*overrides, f"output={Path(folder) / 'out'}", f"parts={arguments.parts}"]
            peak = peak_rss_mib([sys.executable, "-m", "recsys_lightning.prepare", *arguments_of_run])
        data = peak - baseline
        print(
            f"{name:>22}: peak RSS {peak:.0f} MiB, data-dependent {data:.0f} MiB = {data * 2**20 / interactions:.0f} B/interaction "
            f"(load {os.getloadavg()[0]:.1f})"
        )


if __name__ == "__main__":
    main()
