"""Validation that scales: one validation pass on a fixed sample of users (`data.val_users`), the
blocked top-K against a whole-row `topk`, and how far a sample's NDCG@10 is from the full one.

    .venv/bin/python bench/bench_validation.py large   # 1M users x 1M items x 50M: one pass over 20,000 sampled users
    .venv/bin/python bench/bench_validation.py ml20m   # 138k x 27k x 20M: MF/BPR 2 epochs, sampled vs full NDCG@10
    .venv/bin/python bench/bench_validation.py ml20m --interactions 5000000 --epochs 1   # quicker
    .venv/bin/python bench/bench_validation.py chunks  # large's per-chunk timing alone: random MF, no data (a minute)

`large` times, on its first `--topk-chunks` chunks, scoring, the old top-K (-inf into the hidden items,
then `topk` over whole rows) and `top_k_unseen` on copies of the same scores, then one validation pass
through Lightning. The load average is printed beside every time: this host is shared.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import tempfile
import time
import warnings

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from recsys_lightning.build import build_module
from recsys_lightning.config import PROJECT_ROOT, register_resolvers
from recsys_lightning.metrics import METRIC_NAMES, per_user_metrics
from recsys_lightning.models.mf import MatrixFactorization
from recsys_lightning.ranking import hits, top_k_unseen

warnings.filterwarnings("ignore", ".*no logger configured.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def load() -> str:
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def setup(args: argparse.Namespace, *overrides: str):
    register_resolvers()
    data = ["data=synthetic", f"data.num_users={args.users}", f"data.num_items={args.items}", f"data.num_interactions={args.interactions}"]
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[f"paths.run_dir={tempfile.mkdtemp()}", "run_name=bench", *data, f"data.val_users={args.val_users}", *overrides],
        )
    pl.seed_everything(cfg.seed, verbose=False)
    start = time.perf_counter()
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    seconds = time.perf_counter() - start
    print(f"data: {datamodule.source}, {len(datamodule.interactions):,} interactions, built in {seconds:.0f} s ({load()})")
    return cfg, datamodule, build_module(cfg, datamodule.training_data)


def trainer(**options) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


class EpochTimer(pl.Callback):
    """Prints each training epoch's seconds (and its validation's) as it ends: a long run shows progress."""

    def on_train_epoch_start(self, trainer, module) -> None:
        self.start = time.perf_counter()

    def on_validation_epoch_start(self, trainer, module) -> None:
        self.validation_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, module) -> None:
        if trainer.sanity_checking:
            return
        seconds = time.perf_counter() - self.validation_start
        print(f"  epoch {trainer.current_epoch}: validation on the sample {seconds:.1f} s ({load()})", flush=True)

    def on_train_epoch_end(self, trainer, module) -> None:
        print(f"  epoch {trainer.current_epoch}: {time.perf_counter() - self.start:.0f} s, its validation included ({load()})", flush=True)


def validate(module, datamodule) -> tuple[dict[str, float], float]:
    evaluator = trainer()
    start = time.perf_counter()
    evaluator.validate(module, datamodule=datamodule, verbose=False)
    seconds = time.perf_counter() - start
    return {name: value.item() for name, value in evaluator.callback_metrics.items()}, seconds


def large(args: argparse.Namespace) -> None:
    cfg, datamodule, module = setup(args)
    with_items = int((datamodule.valid_positives.counts() > 0).sum())
    start = time.perf_counter()
    chunks = datamodule.val_dataloader().dataset.chunks
    seconds = time.perf_counter() - start
    print(f"sample of {args.val_users:,} of {with_items:,} users with validation items: {len(chunks)} chunks of {len(chunks[0].users)}")
    print(f"  (chunks built in {seconds:.1f} s)")

    time_ranking(module.model, [(c.users, c.exclude_rows, c.exclude_items) for c in chunks[: args.topk_chunks]], max(cfg.eval.ks))

    _, pass_seconds = validate(module, datamodule)  # the chunks are built: this times the pass alone
    users = sum(len(chunk.users) for chunk in chunks)
    print(f"one validation pass of {users:,} sampled users: {pass_seconds:.0f} s ({users / pass_seconds:,.0f} users/s, {load()})")
    print(f"all {with_items:,} users at that rate: {with_items / (users / pass_seconds) / 3600:.1f} h; peak RSS {peak_rss_gb():.1f} GB")


def time_ranking(model, chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], k: int) -> float:
    """Mean milliseconds per chunk of (users, hidden rows, hidden items) to score, then to take the top k
    the old way (-inf into the hidden items, `topk` over whole rows) and with `top_k_unseen`, on copies
    of the same scores; the two must agree. Returns the seconds per chunk of scoring plus `top_k_unseen`."""
    totals = {"score_all": 0.0, "old top-K (topk over whole rows)": 0.0, "top_k_unseen (blocked)": 0.0}
    with torch.no_grad():
        for users, hidden_rows, hidden_items in chunks:
            start = time.perf_counter()
            scores = model.score_all(users)
            totals["score_all"] += time.perf_counter() - start
            copy = scores.clone()
            start = time.perf_counter()
            scores[hidden_rows, hidden_items] = -torch.inf
            old = scores.topk(k, dim=1)
            totals["old top-K (topk over whole rows)"] += time.perf_counter() - start
            start = time.perf_counter()
            new = top_k_unseen(copy, hidden_rows, hidden_items, k)
            totals["top_k_unseen (blocked)"] += time.perf_counter() - start
            assert torch.equal(scores.gather(1, new), old.values), "blocked top-K differs from topk"
            del scores, copy
    print(f"per chunk of {len(chunks[0][0])} users x {model.num_items:,} items, top {k}, mean of {len(chunks)} chunks ({load()}):")
    for name, total in totals.items():
        print(f"  {name:36s} {1000 * total / len(chunks):8.0f} ms")
    return (totals["score_all"] + totals["top_k_unseen (blocked)"]) / len(chunks)


def chunks_only(args: argparse.Namespace) -> None:
    """`time_ranking` alone, on an untrained MF and random hidden items: a minute, no data to build."""
    torch.manual_seed(0)
    model = MatrixFactorization(args.users, args.items, dim=64).eval()
    chunk_size = min(1024, 2**27 // args.items)  # the defaults of data.eval_chunk_size and data.eval_max_scores
    hidden_per_user = round(0.8 * args.interactions / args.users)  # the training share of each user's items
    generator = torch.Generator().manual_seed(0)
    chunks = []
    for _ in range(args.topk_chunks):
        users = torch.randint(args.users, (chunk_size,), generator=generator)
        hidden_rows = torch.arange(chunk_size).repeat_interleave(hidden_per_user)
        chunks.append((users, hidden_rows, torch.randint(args.items, (len(hidden_rows),), generator=generator)))
    seconds = time_ranking(model, chunks, 20)
    num_chunks = math.ceil(args.val_users / chunk_size)
    print(f"a validation pass of {args.val_users:,} users ({num_chunks} chunks) at that rate: {num_chunks * seconds:.0f} s")


def ml20m(args: argparse.Namespace) -> None:
    cfg, datamodule, module = setup(args)
    start = time.perf_counter()
    trainer(max_epochs=args.epochs, num_sanity_val_steps=0, callbacks=[EpochTimer()]).fit(module, datamodule=datamodule)
    print(f"MF/BPR {args.epochs} epochs with validation on the sample each epoch: {time.perf_counter() - start:.0f} s ({load()})")
    sampled, sampled_seconds = validate(module, datamodule)
    datamodule.val_users = None  # the same data and model, every user with validation items
    users = sum(len(chunk.users) for chunk in datamodule.val_dataloader().dataset.chunks)  # built before the timing
    full, full_seconds = validate(module, datamodule)
    print(f"| users | seconds | ndcg@10 | recall@10 |  ({load()})")
    print(f"| sample of {args.val_users:,} | {sampled_seconds:.1f} | {sampled['val/ndcg@10']:.4f} | {sampled['val/recall@10']:.4f} |")
    print(f"| all {users:,} | {full_seconds:.1f} | {full['val/ndcg@10']:.4f} | {full['val/recall@10']:.4f} |")
    differences = {name: sampled[f"val/{name}"] - full[f"val/{name}"] for name in ("ndcg@10", "recall@10")}
    print("sampled - full: " + ", ".join(f"{name} {difference:+.4f}" for name, difference in differences.items()))
    ndcg = per_user_ndcg_at_10(module, datamodule)
    sample = args.val_users
    spread = ndcg.std().item()
    standard_error = spread / math.sqrt(sample) * math.sqrt(1 - sample / len(ndcg))  # a sample without replacement
    mean = ndcg.mean().item()
    print(f"per-user ndcg@10 mean {mean:.4f}, std {spread:.4f}; standard error of a {sample:,}-user mean {standard_error:.4f}")


def per_user_ndcg_at_10(module, datamodule) -> torch.Tensor:
    """NDCG@10 of each validated user, ranked as validation ranks: the spread a sample's mean has."""
    values = []
    with torch.no_grad():
        for chunk in datamodule.val_dataloader().dataset.chunks:
            top_items = top_k_unseen(module.model.score_all(chunk.users), chunk.exclude_rows, chunk.exclude_items, 10)
            found = hits(top_items, chunk.heldout_rows, chunk.heldout_items, datamodule.num_items)
            num_relevant = torch.bincount(chunk.heldout_rows, minlength=len(chunk.users))
            values.append(per_user_metrics(found, num_relevant, [10])[METRIC_NAMES.index("ndcg"), 0])
    return torch.cat(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=["large", "ml20m", "chunks"])
    parser.add_argument("--val-users", type=int, default=20_000)
    parser.add_argument("--users", type=int, help="default: 1,000,000 (large, chunks), 138,000 (ml20m)")
    parser.add_argument("--items", type=int, help="default: 1,000,000 (large, chunks), 27,000 (ml20m)")
    parser.add_argument("--interactions", type=int, help="default: 50,000,000 (large, chunks), 20,000,000 (ml20m)")
    parser.add_argument("--epochs", type=int, default=2, help="ml20m: training epochs before comparing")
    parser.add_argument("--topk-chunks", type=int, default=8, help="large, chunks: chunks to time top-K on")
    args = parser.parse_args()
    sizes = (138_000, 27_000, 20_000_000) if args.case == "ml20m" else (1_000_000, 1_000_000, 50_000_000)
    args.users, args.items, args.interactions = (given or size for given, size in zip((args.users, args.items, args.interactions), sizes))
    print(f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, {load()}")
    {"large": large, "ml20m": ml20m, "chunks": chunks_only}[args.case](args)


if __name__ == "__main__":
    main()
