"""trainer=sharded: the models' row tables held by TorchRec, sharded row-wise over the ranks (tables.py), and
the Lightning strategy that hands them over and trains them with optimizers fused into backward (strategy.py).

TorchRec is imported only here, and only when trainer=sharded runs."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from recsys_lightning.errors import ConfigError

STRATEGY = "recsys_lightning.sharded.strategy.ShardedTablesStrategy"


def holds_tables(cfg: DictConfig) -> bool:
    """Whether the run's trainer keeps the row tables in TorchRec (trainer=sharded), so the model's are not built."""
    return OmegaConf.select(cfg, "trainer.strategy._target_", default=None) == STRATEGY


# The .ckpt's record of the save its table folders carry in their names: the .ckpt is replaced last, and
# atomically, so whichever .ckpt a crash leaves names folders that are complete and still there.
SAVE_KEY = "sharded_save"
SAVE_ID = re.compile(r"[0-9a-f]{32}")


def tables_folder(checkpoint: str | Path, save_id: str | None) -> Path:
    """Where a trainer=sharded checkpoint's tables are, one file per rank: beside the .ckpt (which keeps the
    rest), named after it and its save (`epoch003.ckpt`: `epoch003.tables-<save id>`); a checkpoint written
    before save ids (`save_id` None) keeps them in `epoch003.tables`."""
    return _beside(checkpoint, "tables", save_id)


def table_optimizer_folder(checkpoint: str | Path, save_id: str | None) -> Path:
    """Where the fused table optimizer's state (Adagrad's accumulators, each rank its rows) is, beside the .ckpt."""
    return _beside(checkpoint, "table_optimizer", save_id)


def folders_of(checkpoint: str | Path) -> list[Path]:
    """Every table and optimizer folder of any save beside `checkpoint` (those a crash or an older save left too)."""
    checkpoint = Path(checkpoint)
    names = {f"{checkpoint.stem}.{kind}" for kind in ("tables", "table_optimizer")}
    if not checkpoint.parent.is_dir():
        return []
    return [
        path
        for path in checkpoint.parent.iterdir()
        if path.name in names or any(path.name.startswith(f"{name}-") and SAVE_ID.fullmatch(path.name[len(name) + 1 :]) for name in names)
    ]


def save_id_of(checkpoint: Mapping[str, Any], path: str | Path) -> str | None:
    """The save a loaded (untrusted) .ckpt names its table folders by, checked to be one `new_save_id` makes,
    so that it can only name a sibling folder; None for a checkpoint written before save ids."""
    save_id = checkpoint.get(SAVE_KEY)
    if save_id is None or (isinstance(save_id, str) and SAVE_ID.fullmatch(save_id)):
        return save_id
    raise ConfigError(f"{path}: refused, its {SAVE_KEY} is not a save id this project writes; the file was altered")


def new_save_id() -> str:
    """A fresh save id, rank 0's on every rank: each save's folders get new names, so a save never writes
    over the folders the .ckpt on disk still names."""
    chosen = [uuid.uuid4().hex]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(chosen, src=0)
    return chosen[0]


def _beside(checkpoint: str | Path, kind: str, save_id: str | None) -> Path:
    checkpoint = Path(checkpoint)
    suffix = "" if save_id is None else f"-{save_id}"
    return checkpoint.with_name(f"{checkpoint.stem}.{kind}{suffix}")
