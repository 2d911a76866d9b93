"""Lightning's checkpoint writer, made atomic (conf/trainer/default.yaml lists it as a plugin)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from recsys_lightning.atomic import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic in the checkpoint's own folder.

    Lightning's default writes the file elsewhere and moves it in, which on another filesystem is a
    copy that a full disk cuts short, leaving a truncated `last.ckpt` for the next resume.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, "wb") as handle:
            torch.save(checkpoint, handle)
