"""Memory per rank and total training pairs/s of DDP ranks launched by torchrun, at W = 1, 2, 4 (issue 24).

    .venv/bin/python bench/bench_scale.py --epochs 2 --global-batch 8192 --overrides "data=synthetic \\
        data.num_users=200000 data.num_items=50000 data.num_interactions=2000000 data.val_users=2000 run_test=false"

For each W of --worlds it runs, in a fresh run folder, one thread per rank (OMP_NUM_THREADS=1, runtime.threads=1):

    torchrun --standalone --nproc-per-node W -m recsys_lightning.train <overrides> trainer=<ddp|sharded: --trainer> \\
        trainer.accelerator=cpu trainer.devices=W runtime.threads=1 trainer.max_epochs=<epochs>

Lightning reads torchrun's environment (TorchElasticEnvironment) and starts no processes of its own. The
same command runs the prepared path with `--overrides "data=prepared data.path=<folder> ..."`.

- Memory: every rank's VmHWM (peak RSS) from /proc/<pid>/status, read every --poll seconds while it runs
  (the last value read per process: the peak never falls), minus the VmHWM of an import-only process,
  measured the same way: the data- and model-dependent peak of each rank. The import-only process imports
  every module any rank imported (each rank runs through bench/rank_modules.py, which lists them at exit:
  TorchRec, FBGEMM, torch.distributed's, TensorBoard's writer, beyond `import recsys_lightning.train`), so
  what is subtracted is the code a rank ran. `vs W=1/W` is the largest rank's figure over (W=1's / W): the
  issue asks for <= 1.15; the next column is the same ratio minus a process that imports recsys_lightning.train
  alone (the figure this bench printed before 2026-12-07). With
  --reference-overrides each W also runs on tiny data, and a second table gives each rank's peak minus its
  peak there: what the data adds, without the fixed cost of a rank (start-up heap, TorchRec and the other
  modules a rank imports as it runs: docs/beyond_one_machine.md), which an import-only process does not have.
- Pairs/s: rank 0's ProgressLog lines in train.log (pairs per second of its training steps since the epoch
  began; validation excluded) for the last epoch, times W: under DDP every rank runs the same number of
  steps of the same batch in lockstep (the gradient all-reduce), so W x rank 0's pace is the total.
  Throughput's train/samples_per_second is not used: its epoch clock also runs through the validation,
  which Lightning runs before on_train_epoch_end.
- Validation s: the last epoch's validation on rank 0, from its EpochLog line; the ranks rank in lockstep
  (every table lookup is a collective under trainer=sharded). What `data.eval_chunk_size` trades memory for.
- Load: /proc/loadavg's 1-minute figure just before each run, and the highest read during it (which
  counts the run's own W ranks). The runs are not niced: on a shared host, read the figures beside the load.
- Predicted: bench/scale_memory.py's formula for today's path, from the users, items and interactions the
  run logs and the config it recorded, as a range: the larger of the setup and training phases (freed
  memory returned to the system) to their sum (kept in the heap). Not for data=prepared, whose log says
  its share instead.

--global-batch B keeps the batch all ranks step on together fixed across W: today's data.batch_size is per
process (B // W is passed), data=prepared's is global (B is passed).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import OmegaConf
from scale_memory import Sizes, today_rank_bytes

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
PACE = re.compile(r"epoch (\d+): step \d+ of \d+ \(global step \d+\), ([\d,]+) pairs/s")
VALIDATION = re.compile(r"^.*epoch \d+, .*\(validation ([\d.]+) s\)$", re.M)
SIZES = re.compile(r"(\d+) users, (\d+) items, (\d+) interactions")


@dataclass
class Watch:
    """What polling saw of one run: each rank process's last VmHWM (bytes) and the 1-minute loads read."""

    peaks: dict[int, int] = field(default_factory=dict)  # pid -> VmHWM
    ranks: dict[int, int] = field(default_factory=dict)  # pid -> RANK
    loads: list[float] = field(default_factory=list)

    def rank_peaks(self) -> dict[int, int]:
        """The largest VmHWM of each rank (one process each, unless torchrun restarted one)."""
        peaks: dict[int, int] = {}
        for pid, peak in self.peaks.items():
            rank = self.ranks[pid]
            peaks[rank] = max(peaks.get(rank, 0), peak)
        return dict(sorted(peaks.items()))


@dataclass(frozen=True)
class RunFigures:
    world: int
    load_before: float
    load_during: float
    peaks: dict[int, int]  # rank -> VmHWM (bytes)
    pairs_per_second: float | None
    validation_seconds: float | None  # the last epoch's validation, as rank 0's EpochLog line says
    predicted: tuple[int, int] | None  # (larger phase, both phases)
    reference_peaks: dict[int, int] | None = None  # rank -> peak of the same W on --reference-overrides' data


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def high_water_mark(pid: int) -> int | None:
    """VmHWM of `pid` in bytes, or None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun's workers are children of its agent)."""
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(child) for child in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            pending.extend(children)
    return found


def rank_of(pid: int) -> int | None:
    """RANK from a torchrun worker's environment; None for any other process (the agent, a compiler)."""
    try:
        variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for variable in variables:
        if variable.startswith(b"RANK="):
            return int(variable[5:])
    return None


def watch(process: subprocess.Popen, poll: float, ranked: bool) -> Watch:
    """Poll until `process` exits: the VmHWM of its rank processes (or of itself, when not `ranked`) and the load."""
    seen = Watch()
    while process.poll() is None:
        for pid in descendants(process.pid) if ranked else [process.pid]:
            if pid not in seen.ranks:
                rank = rank_of(pid) if ranked else 0
                if rank is None:
                    continue
                seen.ranks[pid] = rank
            peak = high_water_mark(pid)
            if peak is not None:
                seen.peaks[pid] = peak
        seen.loads.append(load_average())
        time.sleep(poll)
    return seen


IMPORT_ONLY = """
import importlib, sys, time
import recsys_lightning.train
for name in sys.stdin.read().split():
    try:
        importlib.import_module(name)
    except Exception:  # a module only its package may import, or one for another platform: not the rank's code
        pass
time.sleep(1)
"""


def import_only_peak(poll: float, modules: set[str]) -> int:
    """VmHWM of a process that imports recsys_lightning.train and `modules`, then sleeps so the last read follows the imports."""
    command = [sys.executable, "-c", IMPORT_ONLY]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env={**os.environ, **ONE_THREAD}, stdin=subprocess.PIPE, text=True)
    process.stdin.write("\n".join(sorted(name for name in modules if not name.startswith("__"))))
    process.stdin.close()
    seen = watch(process, poll, ranked=False)
    if process.returncode != 0 or not seen.peaks:
        raise SystemExit(f"the import-only process failed (exit {process.returncode})")
    return max(seen.peaks.values())


def torchrun_command(
    world: int, overrides: list[str], epochs: int, global_batch: int | None, run_dir: Path, trainer: str = "ddp"
) -> list[str]:
    batch = []
    if global_batch is not None:
        prepared = "data=prepared" in overrides
        batch = [f"data.batch_size={global_batch if prepared else max(1, global_batch // world)}"]
    return [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world)),
        *(str(PROJECT_ROOT / "bench" / "rank_modules.py"), *overrides, *batch),
        *(f"trainer={trainer}", "trainer.accelerator=cpu", f"trainer.devices={world}", "runtime.threads=1"),
        *(f"trainer.max_epochs={epochs}", "projector.max_items=0", "callbacks.progress_bar.refresh_rate=0"),
        *("callbacks.progress_log.interval_seconds=0.5", f"hydra.run.dir={run_dir}"),
    ]


def pairs_per_second(log: str, world: int) -> float | None:
    """W x rank 0's pace at its last progress line of the last epoch that logged one."""
    paces = {int(epoch): float(pace.replace(",", "")) for epoch, pace in PACE.findall(log)}  # later lines win
    return world * paces[max(paces)] if paces else None


def predicted_bytes(log: str, run_dir: Path, world: int) -> tuple[int, int] | None:
    """Today's formula (larger phase, both phases) for the sizes the run logged and the config it recorded;
    None when it logged no sizes, or trained another model than MF."""
    found = SIZES.search(log)
    if found is None:
        return None
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    if OmegaConf.select(cfg, "model._target_") != "recsys_lightning.models.MatrixFactorization":
        return None  # the formula's tables are MF's (user and item factors, biases)
    users, items, interactions = (int(value) for value in found.groups())
    val_users = OmegaConf.select(cfg, "data.val_users")
    sizes = Sizes(
        interactions,
        users,
        items,
        dim=int(OmegaConf.select(cfg, "model.dim", default=64)),
        bias=bool(OmegaConf.select(cfg, "model.bias", default=False)),
        eval_chunk_size=int(OmegaConf.select(cfg, "data.eval_chunk_size", default=1024)),
        eval_max_scores=int(OmegaConf.select(cfg, "data.eval_max_scores", default=2**27)),
        validated_share=1.0 if val_users is None else int(val_users) / users,
        tested=bool(OmegaConf.select(cfg, "run_test", default=True)),
        sparse_gradients=bool(OmegaConf.select(cfg, "model.sparse_gradients", default=False)),
    )
    return today_rank_bytes(sizes, world)


def run_world(world: int, args: argparse.Namespace, overrides: str, modules: set[str]) -> RunFigures:
    """Runs W ranks on `overrides`, adding the modules they imported to `modules`."""
    with tempfile.TemporaryDirectory(prefix=f"bench_scale_w{world}_") as folder:
        run_dir = Path(folder) / "run"
        listed = Path(folder) / "modules"
        listed.mkdir()
        command = torchrun_command(world, shlex.split(overrides), args.epochs, args.global_batch, run_dir, args.trainer)
        load_before = load_average()
        environment = {**os.environ, **ONE_THREAD, "RANK_MODULES_DIR": str(listed)}
        with open(Path(folder) / "output.txt", "w") as output:
            process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT)
            seen = watch(process, args.poll, ranked=True)
        printed = (Path(folder) / "output.txt").read_text()
        if process.returncode != 0:
            raise SystemExit(f"W={world} failed (exit {process.returncode}): {shlex.join(command)}\n{printed[-3000:]}")
        log = (run_dir / "train.log").read_text() if (run_dir / "train.log").is_file() else printed
        peaks = seen.rank_peaks()
        if len(peaks) != world:
            raise SystemExit(f"W={world}: saw {len(peaks)} rank processes; lower --poll")
        for names in listed.iterdir():
            modules.update(names.read_text().split())
        return RunFigures(
            world,
            load_before,
            max(seen.loads, default=load_before),
            peaks,
            pairs_per_second(log, world),
            float(VALIDATION.findall(log)[-1]) if VALIDATION.search(log) else None,
            predicted_bytes(log, run_dir, world),
        )


def markdown(runs: list[RunFigures], baseline: int, train_imports: int) -> str:
    first = runs[0] if runs and runs[0].world == 1 else None
    lines = [
        f"import-only peak (subtracted): {baseline / MIB:,.0f} MiB importing every module a rank imported, "
        f"{train_imports / MIB:,.0f} MiB importing recsys_lightning.train alone",
        "",
        "| W | load before | load during (max) | peak - imports per rank (MiB) | largest vs W=1/W "
        "| the same minus recsys_lightning.train's imports | predicted today, MiB (max - sum of phases) "
        "| total pairs/s | vs W=1 | validation s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        largest = max(run.peaks.values())
        per_rank = " / ".join(f"{(peak - baseline) / MIB:,.0f}" for peak in run.peaks.values())
        share, share_before = "n/a", "n/a"
        if first:
            first_largest = max(first.peaks.values())
            share = f"{(largest - baseline) / ((first_largest - baseline) / run.world):.2f}"
            share_before = f"{(largest - train_imports) / ((first_largest - train_imports) / run.world):.2f}"
        predicted = f"{run.predicted[0] / MIB:,.0f} - {run.predicted[1] / MIB:,.0f}" if run.predicted is not None else "n/a"
        pace = f"{run.pairs_per_second:,.0f}" if run.pairs_per_second is not None else "n/a"
        speedup = (
            f"{run.pairs_per_second / first.pairs_per_second:.2f}" if first and run.pairs_per_second and first.pairs_per_second else "n/a"
        )
        lines.append(
            f"| {run.world} | {run.load_before:.2f} | {run.load_during:.2f} | {per_rank} | {share} | {share_before} "
            f"| {predicted} | {pace} | {speedup} | {run.validation_seconds if run.validation_seconds is not None else 'n/a'} |"
        )
    if all(run.reference_peaks is not None for run in runs):
        lines += ["", *data_dependent_table(runs)]
    return "\n".join(lines)


def data_dependent_table(runs: list[RunFigures]) -> list[str]:
    """Each rank's peak minus its peak in the same run on the reference data: what the data adds, with
    what a rank costs at any size (its start-up heap, the modules it imports as it runs) taken out."""
    added = {run.world: {rank: peak - run.reference_peaks[rank] for rank, peak in run.peaks.items()} for run in runs}
    first = added.get(1)
    lines = ["| W | peak - same run on the reference data, per rank (MiB) | largest vs W=1/W |", "|---|---|---|"]
    for world, peaks in added.items():
        share = f"{max(peaks.values()) / (max(first.values()) / world):.2f}" if first else "n/a"
        lines.append(f"| {world} | {' / '.join(f'{peak / MIB:,.0f}' for peak in peaks.values())} | {share} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4], help="numbers of ranks to run (W=1 first gives the ratios)")
    parser.add_argument("--overrides", default="data=synthetic", help="data and model overrides, one string")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--trainer", choices=["ddp", "sharded"], default="ddp", help="trainer=ddp (whole tables per rank) or trainer=sharded"
    )
    parser.add_argument("--global-batch", type=int, default=None, help="pairs per step over all ranks (default: the data's batch_size)")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between reads of /proc")
    parser.add_argument(
        "--reference-overrides",
        default=None,
        help="the same overrides on data small enough to cost nothing (a tiny prepared folder): each W runs on it too, "
        "and each rank's peak minus its peak there is printed as the data-dependent figure",
    )
    args = parser.parse_args()
    runs, modules = [], set()
    for world in args.worlds:
        run = run_world(world, args, args.overrides, modules)
        if args.reference_overrides is not None:
            run = replace(run, reference_peaks=run_world(world, args, args.reference_overrides, modules).peaks)
        runs.append(run)
        print(f"W={world} done: load {runs[-1].load_before:.2f} before, {runs[-1].load_during:.2f} during", file=sys.stderr, flush=True)
    print(
        f"trainer={args.trainer}; overrides: {args.overrides}; epochs {args.epochs}; global batch {args.global_batch or 'the data default'}"
    )
    print(markdown(runs, import_only_peak(args.poll, modules), import_only_peak(args.poll, set())))


if __name__ == "__main__":
    main()
