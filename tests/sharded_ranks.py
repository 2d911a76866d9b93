"""One rank of trainer=sharded checks, as `torchrun --nproc-per-node W tests/sharded_ranks.py <check>[,<check>...] <out dir>`
starts it (test_sharded_training.py); each rank writes <out dir>/<check>/rank<r>.json. The checks of one world size
run one after another in one launch over one process group: a launch's start-up (torch, TorchRec and Lightning
imported by every rank) costs more than most checks.

- `lookup`: a TorchRec table of 10 rows filled from one plain table; each rank gathers every row and reports
  its own rows' place (first row, count) and the gathered values; then odd ranks gather no ids while the
  others gather three, from it and from a replicated table.
- `losses`: MF/BPR with SGD on small synthetic data, global batch 64 (64 / W per rank), uniform negatives:
  the global mean loss of each of the first 20 steps, and how far each table's rows moved; `plain` the same
  in one process without TorchRec, from the same initial rows and negatives; `prepared` the same with each
  rank reading its own share of users (data=prepared).
- `ranking` / `ranking_replicated`: MF tables (biases included) set to `known_tables`, each rank its rows, then
  Trainer.validate and Trainer.test through the module: every table row-wise, or the item tables replicated.
  61 validation users in chunks of 30: at W=2 one rank ranks 2 chunks, the other 1 (padded). `bce` and
  `bce_replicated` the same with loss=bce, whose val/bce and val/auc score held-out and drawn pairs."""

from __future__ import annotations

import json
import os
import sys
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from recsys_lightning.build import build_module
from recsys_lightning.data.synthetic import SyntheticDataModule
from recsys_lightning.prepared.datamodule import PreparedDataModule
from recsys_lightning.sharded import STRATEGY
from recsys_lightning.sharded.strategy import ShardedTablesStrategy
from recsys_lightning.sharded.tables import ShardedRowTables, TableSpec, initial_rows, local_rows

from helpers import MemoryShares, module_config

GLOBAL_BATCH = 64
STEPS = 20


def lookup(out: Path) -> None:
    rank = dist.get_rank()
    full = torch.arange(10 * 6, dtype=torch.float32).view(10, 6).sin()
    specs = [TableSpec("rows", 10, 6, 0.1), TableSpec("small", 3, 6, 0.1)]  # row-wise; replicated
    tables = ShardedRowTables(specs, 5, torch.optim.SGD, {"lr": 0.1}, seed=0, device=torch.device("cpu"))
    rows, first, total = tables.local_rows("rows")
    with torch.no_grad():
        rows.copy_(full[first : first + len(rows)])
    gathered = tables.gather("rows", torch.arange(10).flip(0).view(2, 5))
    # Odd ranks gather nothing (a padding chunk) while the others gather: the collective still completes.
    wanted = torch.arange(0) if rank % 2 else torch.tensor([0, 2, 2])
    empty = [tuple(tables.gather(name, wanted).shape) for name in ("rows", "small")]
    record = {
        "first": first,
        "count": len(rows),
        "total": total,
        "equal": bool(torch.equal(gathered, full.flip(0).view(2, 5, 6))),
        "shapes": empty,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))


class StepLosses(pl.Callback):
    """The mean training loss of every step over all ranks' examples."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        total = torch.stack([outputs["loss"].detach() * len(batch), torch.tensor(float(len(batch)))])
        dist.all_reduce(total)
        self.losses.append((total[0] / total[1]).item())


def losses(out: Path, sharded: bool = True, prepared: bool = False) -> None:
    world = int(os.environ["WORLD_SIZE"])
    datamodule = SyntheticDataModule(num_users=300, num_items=200, num_interactions=6000, batch_size=GLOBAL_BATCH // world, seed=0)
    datamodule.setup("fit")
    if prepared:  # each rank reads its share of users; data.batch_size is then the global batch
        datamodule = PreparedDataModule.from_source(MemoryShares(datamodule), batch_size=GLOBAL_BATCH, seed=0)
        datamodule.setup("fit")
    cfg = module_config(optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5})
    if sharded:
        cfg = OmegaConf.merge(cfg, {"trainer": {"strategy": {"_target_": STRATEGY}}})
    module = build_module(cfg, datamodule.training_data)
    if not sharded:  # one plain process, from the sharded tables' initial rows and negatives
        with torch.no_grad():
            for name, table in module.model.named_parameters():
                table.copy_(initial_rows(cfg.seed, TableSpec(name, *table.shape, 0.0 if table.shape[1] == 1 else 0.1), 0, len(table)))
        module.sampler.by_example = True
    steps = StepLosses()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world,
        # 300 users: sharded row-wise; 200 items: replicated (data parallel, Lightning's optimizer).
        strategy=ShardedTablesStrategy(row_wise_min_rows=250) if sharded else "ddp",
        max_steps=STEPS,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[steps],
    )
    trainer.fit(module, datamodule=datamodule)
    moved = {}
    for name in ("user_factors", "item_factors"):
        rows, first, total = local_rows(module.model, name)
        spec = TableSpec(name, total, rows.shape[1], 0.1)
        moved[name] = [first, len(rows), total, (rows - initial_rows(cfg.seed, spec, first, first + len(rows))).abs().max().item()]
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps({"losses": steps.losses, "moved": moved}))


def ranking_data() -> SyntheticDataModule:
    """Small synthetic data whose evaluation ranks hold unequal numbers of chunks at W=2."""
    datamodule = SyntheticDataModule(num_users=300, num_items=200, num_interactions=6000, batch_size=64, eval_chunk_size=30, val_users=61)
    datamodule.setup("fit")
    return datamodule


def known_tables() -> dict[str, torch.Tensor]:
    """Whole MF tables drawn from fixed seeds, the same on every rank and in the test's one process."""
    shapes = {"user_factors": (300, 16), "item_factors": (200, 16), "user_bias": (300, 1), "item_bias": (200, 1)}
    return {name: torch.randn(*shape, generator=torch.Generator().manual_seed(index)) for index, (name, shape) in enumerate(shapes.items())}


def ranking(out: Path, row_wise_min_rows: int = 150, loss: str = "BPRLoss") -> None:
    world = int(os.environ["WORLD_SIZE"])
    datamodule = ranking_data()
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    losses = {"loss": {"_target_": f"recsys_lightning.losses.{loss}"}}
    cfg = OmegaConf.merge(module_config(optimizer=sgd, eval={"ks": [5, 10]}, **losses), {"trainer": {"strategy": {"_target_": STRATEGY}}})
    module = build_module(cfg, datamodule.training_data)
    tables = known_tables()

    class KnownTables(ShardedTablesStrategy):
        def setup(self, trainer: pl.Trainer) -> None:  # the tables exist once they are handed over
            super().setup(trainer)
            with torch.no_grad():
                for name, full in tables.items():
                    rows, first, _ = local_rows(module.model, name)
                    rows.copy_(full[first : first + len(rows)])

    options = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    trainer = pl.Trainer(accelerator="cpu", devices=world, strategy=KnownTables(row_wise_min_rows=row_wise_min_rows), **options)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    validated = {name: float(value) for name, value in trainer.callback_metrics.items()}  # not logged outside fit: not returned
    (tested,) = trainer.test(module, datamodule=datamodule, verbose=False)
    chunks = len(datamodule.ranking_chunks("valid", trainer.global_rank, world))
    record = {"val": validated, "test": tested, "chunks": chunks, "row_wise": module.model.sharded_tables.row_wise("item_factors")}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    torch.set_num_threads(1)
    checks = {
        "lookup": lookup,
        "losses": losses,
        "plain": partial(losses, sharded=False),
        "prepared": partial(losses, prepared=True),
        "ranking": ranking,
        "ranking_replicated": partial(ranking, row_wise_min_rows=250),
        "bce": partial(ranking, loss="BCELoss"),
        "bce_replicated": partial(ranking, row_wise_min_rows=250, loss="BCELoss"),
    }
    dist.init_process_group("gloo")
    for name in sys.argv[1].split(","):
        torch.manual_seed(0)  # each check as if it ran alone
        (Path(sys.argv[2]) / name).mkdir(exist_ok=True)
        checks[name](Path(sys.argv[2]) / name)
        dist.barrier()
    dist.destroy_process_group()  # after a barrier: no rank exits while another's last exchange is in flight (a C++ terminate)
