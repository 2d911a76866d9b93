"""Large catalogues: training step time and memory with dense Adam vs SparseAdam, at two item counts.

Each (items, optimizer) case runs in its own process, so its peak memory is its own: synthetic data of
`--users` x items x `--interactions`, MF/BPR through Lightning for `--steps` steps (the first
`--warmup` untimed), and a few full-ranking evaluation chunks. Seconds per epoch are extrapolated
from the median step time (a 50M-interaction epoch is ~10k steps of 4,096).

    .venv/bin/python bench/bench_sparse.py                                    # 1M users, 100k and 1M items, 50M
    .venv/bin/python bench/bench_sparse.py --interactions 5000000 --steps 100 # quicker
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from recsys_lightning.build import build_module
from recsys_lightning.config import PROJECT_ROOT, register_resolvers

OPTIMIZERS = {"adam": "dense Adam (fused)", "sparse_adam": "SparseAdam"}


class StepTimer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.seconds, self._start = warmup, [], 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.seconds.append(time.perf_counter() - self._start)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def one_case(args: argparse.Namespace) -> dict:
    register_resolvers()
    overrides = [
        f"paths.run_dir={tempfile.mkdtemp()}",
        "run_name=bench",
        "data=synthetic",
        f"data.num_users={args.users}",
        f"data.num_items={args.items}",
        f"data.num_interactions={args.interactions}",
        f"optimizer={args.optimizer}",
    ]
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    pl.seed_everything(cfg.seed, verbose=False)
    start = time.perf_counter()
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    build_seconds, rss_data = time.perf_counter() - start, peak_rss_gb()

    module = build_module(cfg, datamodule.training_data)
    timer = StepTimer(args.warmup)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[timer],
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=args.warmup + args.steps,
        limit_val_batches=args.eval_chunks,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=datamodule)
    rss_train = peak_rss_gb()
    start = time.perf_counter()
    trainer.validate(module, datamodule=datamodule, verbose=False)
    eval_seconds = time.perf_counter() - start
    chunks = datamodule.val_dataloader().dataset.chunks[: args.eval_chunks]
    step = statistics.median(timer.seconds)
    steps_per_epoch = len(datamodule.train_dataloader())
    return {
        "items": args.items,
        "optimizer": args.optimizer,
        "build_s": build_seconds,
        "rss_data_gb": rss_data,
        "step_ms": 1000 * step,
        "epoch_s": step * steps_per_epoch,
        "steps_per_epoch": steps_per_epoch,
        "rss_train_gb": rss_train,
        "eval_users_per_s": sum(len(c.users) for c in chunks) / eval_seconds,
        "eval_chunk_users": len(chunks[0].users),
        "parameters": sum(p.numel() for p in module.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--interactions", type=int, default=50_000_000)
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--eval-chunks", type=int, default=8)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--optimizer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.items = args.items[0]
        print(json.dumps(one_case(args)))
        return

    print(
        f"MF/BPR, dim 64, batch 4096, {args.users:,} users, {args.interactions:,} interactions; "
        f"median of {args.steps} steps after {args.warmup}"
    )
    print("| items | optimizer | parameters | ms/step | s/epoch (extrapolated) | peak RSS data / training | eval users/s (chunk) |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    results = {}
    for items in args.items:
        for optimizer in args.optimizers:
            command = [
                sys.executable,
                __file__,
                "--one",
                "--optimizer",
                optimizer,
                "--items",
                str(items),
                "--users",
                str(args.users),
                "--interactions",
                str(args.interactions),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--eval-chunks",
                str(args.eval_chunks),
            ]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            r = results[items, optimizer] = json.loads(output.strip().splitlines()[-1])
            print(
                f"| {items:,} | {OPTIMIZERS[optimizer]} | {r['parameters'] / 1e6:.0f}M | {r['step_ms']:.1f} | {r['epoch_s']:,.0f} "
                f"({r['steps_per_epoch']:,} steps) | {r['rss_data_gb']:.1f} / {r['rss_train_gb']:.1f} GB | "
                f"{r['eval_users_per_s']:,.0f} ({r['eval_chunk_users']}) |",
                flush=True,
            )
    if len(args.items) == 2:
        small, large = args.items
        for optimizer in args.optimizers:
            ratio = results[large, optimizer]["step_ms"] / results[small, optimizer]["step_ms"]
            print(f"{OPTIMIZERS[optimizer]}: step time at {large:,} items / at {small:,} items = {ratio:.2f}")


if __name__ == "__main__":
    main()
