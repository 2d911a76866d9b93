"""trainer=sharded: the models' row tables held by TorchRec, sharded row-wise over the ranks (tables.py), and
the Lightning strategy that hands them over and trains them with optimizers fused into backward (strategy.py).

TorchRec is imported only here, and only when trainer=sharded runs."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

STRATEGY = "recsys_lightning.sharded.strategy.ShardedTablesStrategy"


def holds_tables(cfg: DictConfig) -> bool:
    """Whether the run's trainer keeps the row tables in TorchRec (trainer=sharded), so the model's are not built."""
    return OmegaConf.select(cfg, "trainer.strategy._target_", default=None) == STRATEGY


def tables_folder(checkpoint: str | Path) -> Path:
    """Where a trainer=sharded checkpoint's tables are, one file per rank: beside the .ckpt (which keeps the
    rest), named after it (`epoch003.ckpt`: `epoch003.tables`)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.tables")


def table_optimizer_folder(checkpoint: str | Path) -> Path:
    """Where the fused table optimizer's state (Adagrad's accumulators, each rank its rows) is, beside the .ckpt."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.table_optimizer")
