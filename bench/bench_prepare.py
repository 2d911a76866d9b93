"""Peak memory and time of `prepare` (issue 24): ML-100K, and synthetic 200k users x 50k items at 8M and 20M.

    .venv/bin/python bench/bench_prepare.py                         # ML-100K, 8M and 20M; chunk 1,000,000 and 250,000
    .venv/bin/python bench/bench_prepare.py --sizes 8000000 --chunks 1000000
    .venv/bin/python bench/bench_prepare.py --sizes 4000000 --chunks 250000 --users 2000000 --items 1000000 --csv-only  # id maps' cost
    .venv/bin/python bench/bench_prepare.py --sizes 8000000 --csv-only --files pre-split  # train/valid/test files
    .venv/bin/python bench/bench_prepare.py --sizes 8000000 --csv-only --k-core 20  # with k-core filtering

Each prepare runs through the entry point in its own process; its peak RSS comes from wait4, and the
data-dependent part is that minus the peak of a process that only imports what prepare imports.

The synthetic generator draws distinct pairs, so it holds every pair while it draws: the synthetic
source's own peak grows with the interactions whatever prepare does. So the synthetic data is written
once to a CSV (by a separate process, not measured) and prepare is measured reading that file; the
synthetic source itself is measured once at the default chunk, for comparison. With `--files pre-split`
the same rows are written as train, valid and test files (each row's file drawn 80/10/10, seeded) and
prepared as data.train_path/valid_path/test_path.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPORTS = "import recsys_lightning.prepare, recsys_lightning.data.movielens, recsys_lightning.data.synthetic, recsys_lightning.data.csv"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
WRITE_CSV = """
import sys
import pyarrow as pa, pyarrow.csv
from recsys_lightning.data.synthetic import generate_interactions
frame = generate_interactions(int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[2]), seed=42)
table = pa.table({"userId": frame["user_id"], "itemId": frame["item_id"], "timestamp": frame["timestamp"].astype("int64")})
if len(sys.argv) == 5:
    pyarrow.csv.write_csv(table, sys.argv[1], pyarrow.csv.WriteOptions(quoting_style="none"))
else:  # pre-split: train, valid and test files
    import numpy as np
    part = np.random.default_rng(7).choice(3, size=len(frame), p=[0.8, 0.1, 0.1])
    for code, path in enumerate(sys.argv[5:]):
        pyarrow.csv.write_csv(table.filter(pa.array(part == code)), path, pyarrow.csv.WriteOptions(quoting_style="none"))
"""
FILES = ("one", "pre-split")  # one file split by prepare, or train/valid/test files used as given


def peak_rss_mib(command: list[str]) -> tuple[float, float]:
    """The peak resident memory of `command`, a child of this process, in MiB (Linux reports KiB), and its seconds."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        sys.exit(f"failed: {' '.join(command)}\n{process.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[8_000_000, 20_000_000], help="synthetic interaction counts")
    parser.add_argument("--chunks", type=int, nargs="*", default=[1_000_000, 250_000], help="chunk_rows values")
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--csv-only", action="store_true", help="only prepare from the CSV files (no ML-100K, no synthetic source)")
    parser.add_argument("--k-core", type=int, default=0, help="data.min_user_interactions and min_item_interactions of the CSV runs")
    parser.add_argument("--files", choices=FILES, nargs="*", default=["one"], help="CSV layouts of the synthetic rows to prepare")
    arguments = parser.parse_args()
    baseline, _ = peak_rss_mib([sys.executable, "-c", IMPORTS])
    print(f"import-only peak RSS {baseline:.0f} MiB (load {os.getloadavg()[0]:.1f})")
    with tempfile.TemporaryDirectory() as scratch:
        runs = [] if arguments.csv_only else [("ML-100K", 100_000, arguments.chunks[0], ["data=movielens"])]
        for size in arguments.sizes:
            shape = [str(size), str(arguments.users), str(arguments.items)]
            k_core = [f"data.min_user_interactions={arguments.k_core}", f"data.min_item_interactions={arguments.k_core}"]
            kind = f" (k-core {arguments.k_core})" if arguments.k_core else ""
            if "one" in arguments.files:
                csv = Path(scratch) / f"synthetic{size}.csv"
                subprocess.run([sys.executable, "-c", WRITE_CSV, str(csv), *shape], env=ENV, check=True)
                runs += [
                    (f"synthetic {size:,} CSV{kind}", size, chunk, ["data=csv", f"data.path={csv}", *k_core]) for chunk in arguments.chunks
                ]
            if "pre-split" in arguments.files:
                paths = {part: Path(scratch) / f"synthetic{size}-{part}.csv" for part in ("train", "valid", "test")}
                subprocess.run([sys.executable, "-c", WRITE_CSV, "-", *shape, *map(str, paths.values())], env=ENV, check=True)
                keys = ["data=csv", "data.path=null", *(f"data.{part}_path={path}" for part, path in paths.items()), *k_core]
                runs += [(f"synthetic {size:,} pre-split CSVs{kind}", size, chunk, keys) for chunk in arguments.chunks]
            shape_keys = [f"data.num_users={arguments.users}", f"data.num_items={arguments.items}", f"data.num_interactions={size}"]
            source = ["data=synthetic", *shape_keys]
            runs += [] if arguments.csv_only else [(f"synthetic {size:,} source", size, arguments.chunks[0], source)]
        for name, interactions, chunk, overrides in runs:
            output = Path(scratch) / "out"
            options = [*overrides, f"output={output}", f"parts={arguments.parts}", f"chunk_rows={chunk}"]
            peak, seconds = peak_rss_mib([sys.executable, "-m", "recsys_lightning.prepare", *options])
            subprocess.run(["rm", "-rf", str(output)], check=True)
            data = peak - baseline
            print(
                f"{name:>28}, chunk {chunk:>9,}: peak RSS {peak:.0f} MiB, data-dependent {data:.0f} MiB "
                f"({data * 2**20 / interactions:.0f} B/interaction), {seconds:.0f} s (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
