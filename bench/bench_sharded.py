"""trainer=sharded's figures (issue 25): memory per rank of TorchRec tables sharded row-wise, and training
pairs/s beside today's trainer=ddp, at W = 1, 2, 4 gloo ranks on this host, one thread per rank.

    .venv/bin/python bench/bench_sharded.py memory       # 2M users x 500k items x dim 64, Adagrad state
    .venv/bin/python bench/bench_sharded.py throughput   # MF/BPR on synthetic data, sharded beside ddp

Each W runs as `torchrun --standalone --nproc-per-node W bench/bench_sharded.py --worker ...`.

- Memory: every rank builds MF's four row tables (user and item factors, 64 wide; biases, stored 4 wide) as
  `ShardedRowTables`, all row-wise, with Adagrad fused into backward (FBGEMM's CPU kernels have no Adam;
  exact Adagrad keeps one state value per weight, as each of Adam's two moments does), then trains 3 steps
  of 8192 random (user, item) rows. Its figure is its VmHWM (peak RSS) minus that of an import-only process
  (torch, torchrec and the tables module imported, the gloo group joined), rank by rank: the
  table-dependent peak.
  `vs W=1/W` is the largest rank's figure over (W=1's / W); the issue asks for <= 1.15.
- Throughput: MF/BPR (dim 64, uniform negatives) on synthetic data through Lightning with trainer=ddp's
  `SparseTablesDDPStrategy` (sparse Adagrad) and `ShardedTablesStrategy` (tables row-wise; exact Adagrad and
  trainer=sharded's default row-wise Adagrad), global batch fixed across W; pairs/s of the training steps after
  the first 3, summed over ranks (they step in lockstep), and its ratio to the first W's.
- Load: /proc/loadavg's 1-minute figure before each run: the host is shared, read the figures beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USERS, ITEMS, DIM = 2_000_000, 500_000, 64


def high_water_mark() -> int:
    """This process's peak resident memory in bytes (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_worker(out: Path, baseline: bool) -> None:
    import torch
    import torch.distributed as dist

    from recsys_lightning.sharded.tables import ShardedRowTables, TableSpec

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    record = {"rank": rank}
    # What the tables import, in the baseline too: the figure is then the tables' own.
    import torchrec.distributed.embedding  # noqa: F401
    import torchrec.distributed.model_parallel  # noqa: F401
    import torchrec.distributed.planner  # noqa: F401
    import torchrec.optim.apply_optimizer_in_backward  # noqa: F401

    if not baseline:
        specs = [
            TableSpec("user_factors", USERS, DIM, 0.1),
            TableSpec("item_factors", ITEMS, DIM, 0.1),
            TableSpec("user_bias", USERS, 1, 0.0),
            TableSpec("item_bias", ITEMS, 1, 0.0),
        ]
        tables = ShardedRowTables(specs, 1, torch.optim.Adagrad, {"lr": 0.05}, seed=0, device=torch.device("cpu"))
        generator = torch.Generator().manual_seed(rank)
        for _ in range(3):
            users = torch.randint(USERS, (8192,), generator=generator)
            items = torch.randint(ITEMS, (8192,), generator=generator)
            scores = (tables.gather("user_factors", users) * tables.gather("item_factors", items)).sum(-1)
            scores = scores + tables.gather("user_bias", users).squeeze(-1) + tables.gather("item_bias", items).squeeze(-1)
            torch.nn.functional.softplus(-scores).mean().backward()
        record["rows"] = {name: len(tables.local_rows(name)[0]) for name in ("user_factors", "item_factors")}
    dist.barrier()
    record["peak"] = high_water_mark()
    (out / f"rank{rank}.json").write_text(json.dumps(record))


# The table optimizer of each trainer=sharded column: exact Adagrad (as trainer=ddp's sparse Adagrad), or
# row-wise Adagrad (TorchRec's, one accumulator per row: trainer=sharded's default, which DDP has no counterpart of).
SHARDED_OPTIMIZERS = {"adagrad": "torch.optim.Adagrad", "rowwise_adagrad": "torchrec.optim.RowWiseAdagrad"}


def throughput_worker(out: Path, strategy: str, global_batch: int, steps: int) -> None:
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from recsys_lightning.build import build_module
    from recsys_lightning.data.synthetic import SyntheticDataModule
    from recsys_lightning.ddp import SparseTablesDDPStrategy
    from recsys_lightning.sharded import STRATEGY
    from recsys_lightning.sharded.strategy import ShardedTablesStrategy

    world = int(os.environ["WORLD_SIZE"])
    datamodule = SyntheticDataModule(
        num_users=200_000, num_items=50_000, num_interactions=2_000_000, batch_size=global_batch // world, seed=0
    )
    datamodule.setup("fit")
    cfg = OmegaConf.create(
        {
            "model": {"_target_": "recsys_lightning.models.MatrixFactorization", "dim": 64, "sparse_gradients": True},
            "loss": {"_target_": "recsys_lightning.losses.BPRLoss"},
            "sampler": {"_target_": "recsys_lightning.samplers.UniformSampler"},
            "optimizer": {
                "_target_": SHARDED_OPTIMIZERS.get(strategy.removeprefix("sharded-"), "torch.optim.Adagrad"),
                "_partial_": True,
                "lr": 0.05,
            },
            "eval": {"ks": [10]},
            "seed": 0,
            "trainer": {"strategy": {"_target_": STRATEGY}} if strategy.startswith("sharded") else {},
        }
    )
    module = build_module(cfg, datamodule.training_data)

    class Pace(pl.Callback):
        def __init__(self) -> None:
            self.start, self.pairs = 0.0, 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == 2:
                self.start, self.pairs = time.perf_counter(), 0
            elif batch_idx > 2:
                self.pairs += len(batch)

    pace = Pace()
    chosen = ShardedTablesStrategy(row_wise_min_rows=1) if strategy.startswith("sharded") else SparseTablesDDPStrategy()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world,
        strategy=chosen,
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[pace],
    )
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - pace.start
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps({"pairs_per_second": pace.pairs / seconds}))


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def launch(world: int, worker_args: list[str]) -> list[dict]:
    """Run this file's worker on `world` torchrun ranks, one thread each; each rank's record."""
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}", __file__, "--worker", folder]
        result = subprocess.run(command + worker_args, cwd=ROOT, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"W={world} failed:\n{result.stderr[-3000:]}")
        return [json.loads((Path(folder) / f"rank{rank}.json").read_text()) for rank in range(world)]


def memory(worlds: list[int]) -> None:
    print(f"Memory: {USERS:,} users x {ITEMS:,} items x dim {DIM}, Adagrad state, all tables row-wise")
    print("| W | load | rows per rank (users, items) | import-only peak, MiB | table-dependent peak per rank, MiB | vs W=1/W |")
    print("|---|---|---|---|---|---|")
    single = None
    for world in worlds:
        load = load_average()
        baselines = [record["peak"] for record in launch(world, ["memory-baseline"])]
        records = launch(world, ["memory"])
        peaks = [record["peak"] - baseline for record, baseline in zip(records, baselines)]
        single = single or max(peaks)
        rows = sorted({(record["rows"]["user_factors"], record["rows"]["item_factors"]) for record in records})
        ratio = max(peaks) / (single / world)
        shown = ", ".join(f"{peak / 2**20:,.0f}" for peak in peaks)
        imports = ", ".join(f"{baseline / 2**20:,.0f}" for baseline in baselines)
        print(f"| {world} | {load:.2f} | {' / '.join(f'{u:,}, {i:,}' for u, i in rows)} | {imports} | {shown} | {ratio:.2f} |", flush=True)


def throughput(worlds: list[int], global_batch: int, steps: int) -> None:
    print(f"Throughput: MF/BPR dim 64, 200k users x 50k items, 2M pairs, global batch {global_batch}, {steps} steps")
    print("| W | load | trainer=ddp, sparse Adagrad | trainer=sharded, Adagrad | trainer=sharded, row-wise Adagrad |")
    print("|---|---|---|---|---|")
    strategies = ("ddp", *(f"sharded-{name}" for name in SHARDED_OPTIMIZERS))
    paces: dict[int, dict[str, float]] = {}
    for world in worlds:
        load = load_average()
        paces[world] = {
            strategy: sum(record["pairs_per_second"] for record in launch(world, ["throughput", strategy, str(global_batch), str(steps)]))
            for strategy in strategies
        }
        shown = " | ".join(
            f"{paces[world][strategy]:,.0f} ({paces[world][strategy] / paces[worlds[0]][strategy]:.2f}x)" for strategy in strategies
        )
        print(f"| {world} | {load:.2f} | {shown} |", flush=True)
    print(f"(x: pairs/s over W={worlds[0]}'s with the same trainer and optimizer)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        out, kind = Path(sys.argv[2]), sys.argv[3]
        import torch

        torch.set_num_threads(1)
        if kind.startswith("memory"):
            memory_worker(out, baseline=kind == "memory-baseline")
        else:
            throughput_worker(out, sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figure", choices=["memory", "throughput"])
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--global-batch", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    if args.figure == "memory":
        memory(args.worlds)
    else:
        throughput(args.worlds, args.global_batch, args.steps)


if __name__ == "__main__":
    main()
