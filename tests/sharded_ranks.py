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
  `bce_replicated` the same with loss=bce, whose val/bce and val/auc score held-out and drawn pairs.
  `few_items` / `few_items_replicated` the same over 12 items: K=10 outruns most users' unseen items.
- `losses_hybrid` / `losses_ncf`: `losses` for HybridMF and NeuMF (MLP on from the first step), with their
  dense weights at the end.
- `checkpoint_hybrid` / `checkpoint_ncf`: the model trained 10 SGD steps, saved, then tested from the file.
- `feature_lookup`: a FeatureEmbedding's table (30 features, bias column) row-wise over the ranks, against the plain
  module with the same rows: `rows`, `all`, an empty lookup, and one fused SGD step.
- `losses_features` / `checkpoint_mf_features` / `checkpoint_hybrid_features`: `losses` and `checkpoint` with side
  features on (`FeaturedSynthetic`: 277 user features, 156 item features)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from recsys_lightning.build import build_module
from recsys_lightning.data.datamodule import LoadedInteractions
from recsys_lightning.data.features import FeatureColumns, index_features
from recsys_lightning.data.synthetic import SyntheticDataModule
from recsys_lightning.models.features import FeatureEmbedding
from recsys_lightning.prepared.datamodule import PreparedDataModule
from recsys_lightning.sharded import STRATEGY
from recsys_lightning.sharded.strategy import ShardedTablesStrategy
from recsys_lightning.sharded.tables import ShardedRowTables, TableRows, TableSpec, initial_rows, local_rows

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


# 40 entities' cells over 30 features: none, one, or several .
FEATURE_CELLS = ["" if e % 9 == 4 else "|".join(f"t{(e * k) % 30}" for k in range(1, 2 + e % 4)) for e in range(40)]


def feature_lookup(out: Path) -> None:
    rank = dist.get_rank()
    features = FeatureColumns("memory", pd.Series([str(e) for e in range(40)]), pd.DataFrame({"tags": FEATURE_CELLS}), "|", 2)
    matrix = index_features(features, np.arange(40), "item").mean_matrix()
    plain = FeatureEmbedding(40, matrix.shape[1], dim=6, init_std=0.1, bias=True)
    plain.set_features(matrix, torch.arange(40) % 3 > 0)
    spec = TableSpec("embedding", matrix.shape[1], 7, 0.1, zero_last_column=True)
    tables = ShardedRowTables([spec], 5, torch.optim.SGD, {"lr": 0.5}, seed=0, device=torch.device("cpu"))
    rows, first, total = tables.local_rows("embedding")
    initial = {"zero_bias": bool((rows[:, -1] == 0).all()), "random": bool((rows[:, :-1].std() > 0.05).item())}
    with torch.no_grad():
        rows.copy_(plain.embedding[first : first + len(rows)])
    held = FeatureEmbedding(40, matrix.shape[1], dim=6, init_std=0.1, bias=True)
    held.set_features(matrix, torch.arange(40) % 3 > 0)
    del held.embedding
    held.embedding = TableRows(tables, "embedding")
    index = torch.tensor([[3, 0, 39, 7, 7], [12, 11, 1, 0, 25], [2, 5, 8, 13, 21]])
    with torch.no_grad():
        differences = [(held.rows(index) - plain.rows(index)).abs().max().item(), (held.all() - plain.all()).abs().max().item()]
        empty = list(held.rows(torch.arange(0) if rank % 2 else torch.tensor([4])).shape)
    # One step of the same loss on every rank: the fused SGD step (gradients averaged over ranks) is plain SGD's.
    weights = torch.linspace(-1, 1, 3 * 5 * 7).view(3, 5, 7)
    (held.rows(index) * weights).sum().backward()
    (plain.rows(index) * weights).sum().backward()
    stepped = plain.embedding.detach() - 0.5 * plain.embedding.grad
    rows, first, _ = tables.local_rows("embedding")
    step = (rows - stepped[first : first + len(rows)]).abs().max().item() if len(rows) else 0.0
    record = {"first": first, "count": len(rows), "total": total, "differences": differences, "empty": empty, "step": step, **initial}
    record["moved"] = (stepped - plain.embedding.detach()).abs().max().item()
    (out / f"rank{rank}.json").write_text(json.dumps(record))


class FeaturedSynthetic(SyntheticDataModule):
    """Synthetic interactions with side features: each user a feature of its own (every thirteenth none: 277
    features), each item tag i % 160 and group i % 7 (every eleventh none: 156 features). At row_wise_min_rows=250
    the user feature table is row-wise and the item one replicated; at 150 both are row-wise."""

    def load(self) -> LoadedInteractions:
        loaded = super().load()
        users, items = (np.unique(loaded.interactions[key]) for key in ("user_id", "item_id"))
        user_cells = pd.DataFrame({"u": ["" if u % 13 == 5 else f"u{u}" for u in users]})
        item_cells = pd.DataFrame({"t": ["" if i % 11 == 3 else f"t{i % 160}|g{i % 7}" for i in items]})
        return replace(
            loaded,
            user_features=FeatureColumns("memory", pd.Series(users.astype(str)), user_cells, None, 2),
            item_features=FeatureColumns("memory", pd.Series(items.astype(str)), item_cells, "|", 2),
        )


class StepLosses(pl.Callback):
    """The mean training loss of every step over all ranks' examples."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        total = torch.stack([outputs["loss"].detach() * len(batch), torch.tensor(float(len(batch)))])
        dist.all_reduce(total)
        self.losses.append((total[0] / total[1]).item())


# Small models with an MLP scoring from the first step (zero_init_mlp=false), whose every table is read.
NN_MODELS = {
    "hybrid": {"_target_": "recsys_lightning.models.HybridMF", "dim": 8, "hidden": [16, 8], "zero_init_mlp": False},
    "ncf": {"_target_": "recsys_lightning.models.NeuMF", "gmf_dim": 8, "mlp_dim": 8, "hidden": [16, 8], "zero_init_mlp": False},
    "mf_features": {"_target_": "recsys_lightning.models.MatrixFactorization", "dim": 16, "features": True},
    "hybrid_features": {"_target_": "recsys_lightning.models.HybridMF", "dim": 8, "hidden": [16, 8], "zero_init_mlp": False},
}
NN_TABLES = {"hybrid": ("user_factors", "item_factors"), "ncf": ("user_gmf", "item_gmf", "user_mlp", "item_mlp")}
NN_MODELS["hybrid_features"]["features"] = True
NN_TABLES |= {"mf_features": ("user_factors", "item_factors"), "hybrid_features": ("user_factors", "item_factors")}


def losses(out: Path, sharded: bool = True, prepared: bool = False, model: str | None = None) -> None:
    world = int(os.environ["WORLD_SIZE"])
    kind = FeaturedSynthetic if model is not None and model.endswith("_features") else SyntheticDataModule
    datamodule = kind(num_users=300, num_items=200, num_interactions=6000, batch_size=GLOBAL_BATCH // world, seed=0)
    datamodule.setup("fit")
    if prepared:  # each rank reads its share of users; data.batch_size is then the global batch
        datamodule = PreparedDataModule.from_source(MemoryShares(datamodule), batch_size=GLOBAL_BATCH, seed=0)
        datamodule.setup("fit")
    cfg = module_config(optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5})
    if model is not None:
        cfg = OmegaConf.merge(cfg, {"model": None}, {"model": NN_MODELS[model]})
    if sharded:
        cfg = OmegaConf.merge(cfg, {"trainer": {"strategy": {"_target_": STRATEGY}}})
    module = build_module(cfg, datamodule.training_data)
    initial_dense = {name: value.detach().clone() for name, value in module.model.named_parameters()}
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
    for name in NN_TABLES.get(model, ("user_factors", "item_factors")):
        rows, first, total = local_rows(module.model, name)
        spec = TableSpec(name, total, rows.shape[1], 0.1)
        moved[name] = [first, len(rows), total, (rows - initial_rows(cfg.seed, spec, first, first + len(rows))).abs().max().item()]
    held = getattr(module.model, "sharded_tables", None)
    for name, spec in ({} if held is None else held.specs).items():
        if not name.endswith("_features_embedding"):  # the feature tables too
            continue
        rows, first, total = held.local_rows(name)
        change = (rows - initial_rows(cfg.seed, spec, first, first + len(rows))).abs().max().item()
        moved[name] = [first, len(rows), total, change]
    # The dense rest (none for mf): each parameter's values, and how far it moved.
    dense = {name: value.detach().flatten().tolist() for name, value in module.model.named_parameters()}
    dense_moved = {name: (value - initial_dense[name]).abs().max().item() for name, value in module.model.named_parameters()}
    record = {"losses": steps.losses, "moved": moved, "dense": dense, "dense_moved": dense_moved}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def ranking_data(num_items: int = 200, features: bool = False) -> SyntheticDataModule:
    """Small synthetic data whose evaluation ranks hold unequal numbers of chunks at W=2; with 12 items,
    most users have fewer unseen items than K=10. `features`: with side features (`FeaturedSynthetic`)."""
    interactions = 6000 if num_items > 12 else 1500
    datamodule = (FeaturedSynthetic if features else SyntheticDataModule)(
        num_users=300, num_items=num_items, num_interactions=interactions, batch_size=64, eval_chunk_size=30, val_users=61
    )
    datamodule.setup("fit")
    return datamodule


def known_tables(num_items: int = 200) -> dict[str, torch.Tensor]:
    """Whole MF tables drawn from fixed seeds, the same on every rank and in the test's one process."""
    shapes = {"user_factors": (300, 16), "item_factors": (num_items, 16), "user_bias": (300, 1), "item_bias": (num_items, 1)}
    return {name: torch.randn(*shape, generator=torch.Generator().manual_seed(index)) for index, (name, shape) in enumerate(shapes.items())}


def ranking(out: Path, row_wise_min_rows: int = 150, loss: str = "BPRLoss", num_items: int = 200) -> None:
    world = int(os.environ["WORLD_SIZE"])
    datamodule = ranking_data(num_items)
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    losses = {"loss": {"_target_": f"recsys_lightning.losses.{loss}"}}
    cfg = OmegaConf.merge(module_config(optimizer=sgd, eval={"ks": [5, 10]}, **losses), {"trainer": {"strategy": {"_target_": STRATEGY}}})
    module = build_module(cfg, datamodule.training_data)
    tables = known_tables(num_items)

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


def checkpoint(out: Path, model: str) -> None:
    """`model` trained 10 SGD steps with every table row-wise, saved, then tested from the saved checkpoint by a
    fresh module and Trainer: the .ckpt (dense parameters) and its tables folder (each rank its rows) are read back."""
    world = int(os.environ["WORLD_SIZE"])
    datamodule = ranking_data(features=model.endswith("_features"))
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5}
    cfg = OmegaConf.merge(module_config(optimizer=sgd, eval={"ks": [5, 10]}), {"model": None}, {"model": NN_MODELS[model]})
    cfg = OmegaConf.merge(cfg, {"trainer": {"strategy": {"_target_": STRATEGY}}})
    options = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    strategy = partial(ShardedTablesStrategy, row_wise_min_rows=150)  # 300 users and 200 items: all row-wise
    trainer = pl.Trainer(
        accelerator="cpu", devices=world, strategy=strategy(), max_steps=10, limit_val_batches=0, enable_checkpointing=False, **options
    )
    trainer.fit(build_module(cfg, datamodule.training_data), datamodule=datamodule)
    path = out / "trained.ckpt"
    trainer.save_checkpoint(path)
    module = build_module(cfg, datamodule.training_data)
    (tested,) = pl.Trainer(accelerator="cpu", devices=world, strategy=strategy(), **options).test(
        module, datamodule=datamodule, ckpt_path=path, verbose=False
    )
    row_wise = [module.model.sharded_tables.row_wise(name) for name in module.model.sharded_tables.specs]
    record = {"test": tested, "row_wise": row_wise, "checkpoint": str(path), "config": OmegaConf.to_container(cfg)}
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
        "few_items": partial(ranking, row_wise_min_rows=10, num_items=12),
        "few_items_replicated": partial(ranking, row_wise_min_rows=250, num_items=12),
        "losses_hybrid": partial(losses, model="hybrid"),
        "losses_ncf": partial(losses, model="ncf"),
        "checkpoint_hybrid": partial(checkpoint, model="hybrid"),
        "checkpoint_ncf": partial(checkpoint, model="ncf"),
        "feature_lookup": feature_lookup,
        "losses_features": partial(losses, model="mf_features"),
        "checkpoint_mf_features": partial(checkpoint, model="mf_features"),
        "checkpoint_hybrid_features": partial(checkpoint, model="hybrid_features"),
    }
    dist.init_process_group("gloo")
    for name in sys.argv[1].split(","):
        torch.manual_seed(0)  # each check as if it ran alone
        (Path(sys.argv[2]) / name).mkdir(exist_ok=True)
        checks[name](Path(sys.argv[2]) / name)
        dist.barrier()
    dist.destroy_process_group()  # after a barrier: no rank exits while another's last exchange is in flight (a C++ terminate)
