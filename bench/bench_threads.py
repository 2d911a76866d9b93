"""Training beside other busy processes: wall and CPU seconds of each thread setting (issue 22).

Starts its own background load (1-thread busy loops, one per `--loads` level), then runs the training
entry point (`trainer.max_epochs=20`, each run in a temporary folder) under each case:

    default   the behaviour before issue 22: RECSYS_LIGHTNING_THREADS=off, no OMP_* variables
              (libgomp spins while waiting, torch takes one thread per physical core)
    passive   as default, plus OMP_WAIT_POLICY=PASSIVE
    one       OMP_NUM_THREADS=1
    new       the package's default now (PASSIVE, one thread unless runtime.threads says otherwise)
    spin10k   as default, plus GOMP_SPINCOUNT=10000 (only with --cases)

Each figure is the median of `--repeats` runs (other work on a shared machine comes and goes).

Each row: busy processes beside it, the 1-minute load average when the run started, wall seconds of
the process, training seconds (metrics.json), CPU seconds (user+sys of the child, os.wait4), CPU and
training time against the `one` run at the same load, and training time against the same case idle.

    .venv/bin/python bench/bench_threads.py                                   # loads 0,1; all cases (~3-6 min)
    .venv/bin/python bench/bench_threads.py --loads 0,1,2 --cases new,one     # a subset
    .venv/bin/python bench/bench_threads.py --overrides experiment=ml100k_mf
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARIABLES = (
    "GOMP_SPINCOUNT",
    "OMP_WAIT_POLICY",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "RECSYS_LIGHTNING_THREADS",
    "_RECSYS_LIGHTNING_NUM_THREADS",
)
CASES = {
    "default": {"RECSYS_LIGHTNING_THREADS": "off"},
    "passive": {"RECSYS_LIGHTNING_THREADS": "off", "OMP_WAIT_POLICY": "PASSIVE"},
    "one": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "new": {},
    # libgomp's own middle ground: the default policy with a short spin (iterations) before sleeping
    "spin10k": {"RECSYS_LIGHTNING_THREADS": "off", "GOMP_SPINCOUNT": "10000"},
}
DEFAULT_CASES = ("default", "passive", "one", "new")
BUSY_LOOP = "while True:\n    pass\n"  # one core's worth of pure-Python work, no threads of its own


def case_environment(case: str) -> dict[str, str]:
    environ = {name: value for name, value in os.environ.items() if name not in THREAD_VARIABLES}
    return {**environ, **CASES[case]}


def run_training(case: str, overrides: list[str], folder: Path) -> dict[str, float]:
    """One training run in a subprocess: wall, CPU (user+sys from wait4) and training seconds."""
    run_dir = folder / f"{case}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "recsys_lightning.train", f"hydra.run.dir={run_dir}", *overrides]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=case_environment(case), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        raise SystemExit(f"{case}: exit {process.returncode}: {stderr.strip().splitlines()[-1:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "load": load,
        "wall": wall,
        "train": float(metrics["train_seconds"]),
        "cpu": usage.ru_utime + usage.ru_stime,
        "ndcg": float(metrics.get("test/ndcg@10", float("nan"))),
    }


def start_load(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]


def stop_load(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loads", default="0,1", help="busy processes beside the run, comma-separated (default 0,1)")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row; the row shows their medians")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--overrides", nargs="*", default=[], help="more training overrides, e.g. experiment=ml100k_mf")
    args = parser.parse_args()
    loads = [int(value) for value in args.loads.split(",")]
    cases = args.cases.split(",")
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case {unknown[0]}; choose from {', '.join(CASES)}")
    overrides = [f"trainer.max_epochs={args.epochs}", *args.overrides]
    print(f"{os.cpu_count()} CPUs; python -m recsys_lightning.train {' '.join(overrides)}", flush=True)
    columns = ("busy", "case    ", "load1", " wall s", "train s", "  cpu s", "cpu/one", "train/one", "train/idle", "ndcg@10")
    print(" ".join(columns), flush=True)
    results: dict[tuple[int, str], dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_threads_") as folder:
        for busy in loads:
            background = start_load(busy)
            try:
                time.sleep(2 if busy else 0)  # the busy loops running before the run starts
                # `one` first: the other rows of this load compare against it.
                for case in sorted(cases, key=lambda name: name != "one"):
                    runs = [run_training(case, overrides, Path(folder)) for _ in range(args.repeats)]
                    row = results[busy, case] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                    one, idle = results.get((busy, "one")), results.get((0, case))
                    ratio = lambda value, base, key: f"{value / base[key]:.2f}" if base else "-"  # noqa: E731
                    print(
                        f"{busy:>4} {case:<8} {row['load']:>5.2f} {row['wall']:>7.1f} {row['train']:>7.1f} {row['cpu']:>7.1f} "
                        f"{ratio(row['cpu'], one, 'cpu'):>7} {ratio(row['train'], one, 'train'):>9} "
                        f"{ratio(row['train'], idle, 'train'):>10} {row['ndcg']:>7.4f}",
                        flush=True,
                    )
            finally:
                stop_load(background)


if __name__ == "__main__":
    main()
