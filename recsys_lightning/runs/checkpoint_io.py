"""Lightning's checkpoint reader and writer, made safe (conf/trainer/default.yaml lists it as a plugin)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from recsys_lightning.runs.atomic import WriteRecorder, atomic_file, write_failure
from recsys_lightning.runs.checkpoint_file import load_checkpoint
from recsys_lightning.runs.resume import CHECKPOINT_PATH_FIELDS


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes atomically in the checkpoint's own folder; reads plain data only, from wherever the run
    folder now is.

    Lightning's default writes the file elsewhere and moves it in, which on another filesystem is a
    copy that a full disk cuts short, leaving a truncated `last.ckpt` for the next resume.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path, "wb") as handle:
                writer = WriteRecorder(handle)
                try:
                    torch.save(checkpoint, writer)
                except RuntimeError as error:  # torch's report of a refused write; the OSError is the cause
                    if writer.error is None:
                        raise
                    raise writer.error from error
        except OSError as error:  # ulimit -f, a full disk: one line; the temporary file is gone, any older one kept
            raise write_failure(path, error) from error

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        # The one reader of checkpoints, with its checks: plain data only, no zip bomb, known keys.
        return relocated(load_checkpoint(path, map_location), Path(path).parent)


def relocated(checkpoint: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A run folder that was moved or copied still records its old checkpoint folder; Lightning then
    forgets the best score and keeps stale files. Point the records at `folder` when the files they
    name are all there."""
    for name, state in (checkpoint.get("callbacks") or {}).items():
        if not str(name).startswith("ModelCheckpoint") or not isinstance(state, dict) or not isinstance(state.get("dirpath"), str):
            continue
        if Path(state["dirpath"]) == folder:
            continue
        recorded = [state.get(field) for field in CHECKPOINT_PATH_FIELDS] + list(state.get("best_k_models") or {})
        names = [Path(value).name for value in recorded if isinstance(value, str) and value]
        if not names or not all((folder / name).is_file() for name in names):
            continue
        state["dirpath"] = str(folder)
        for field in CHECKPOINT_PATH_FIELDS:
            if isinstance(state.get(field), str) and state[field]:
                state[field] = str(folder / Path(state[field]).name)
        if isinstance(state.get("best_k_models"), dict):
            state["best_k_models"] = {str(folder / Path(key).name): score for key, score in state["best_k_models"].items()}
    return checkpoint
