"""Find a run's checkpoint and rebuild its model and catalogue without unpickling arbitrary objects."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from recsys_lightning.errors import ConfigError
from recsys_lightning.models.base import Recommender
from recsys_lightning.serving.catalogue import Catalogue

CATALOGUE_KEY = "catalogue"


@dataclass(frozen=True)
class TrainedRun:
    """A model in eval mode with the catalogue it was trained on."""

    model: Recommender
    catalogue: Catalogue
    hyper_parameters: dict[str, Any]
    checkpoint_path: Path

    @property
    def model_name(self) -> str:
        return self.hyper_parameters["model"]["_target_"].rsplit(".", 1)[-1]


def find_checkpoint(run_dir: str | Path, which: str = "best") -> Path:
    """`best` (the one metrics.json names, else the only epochNNN.ckpt), `last`, or a path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir={run_dir}: no such folder; point it at a training run (outputs/runs/<date>/<time>_<name>)")
    if which == "last":
        candidates = [run_dir / "checkpoints" / "last.ckpt"]
    elif which == "best":
        metrics_path = run_dir / "metrics.json"
        recorded = json.loads(metrics_path.read_text()).get("best_checkpoint") if metrics_path.is_file() else None
        candidates = [run_dir / recorded] if recorded else sorted((run_dir / "checkpoints").glob("epoch*.ckpt"))
    else:
        candidates = [Path(which)]
    if len(candidates) != 1 or not candidates[0].is_file():
        found = ", ".join(str(path) for path in candidates) or "none"
        raise ConfigError(f"{run_dir}: cannot find the {which!r} checkpoint (found: {found}); pass checkpoint=last or checkpoint=<path>")
    return candidates[0]


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """`torch.load(weights_only=True)`: tensors and plain containers only, so a checkpoint cannot run code."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConfigError(f"{path}: refused, it holds pickled objects beyond tensors and plain data ({str(error).splitlines()[0]})") from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ConfigError(f"{path}: not a readable checkpoint ({str(error).splitlines()[0]})") from error


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> TrainedRun:
    checkpoint = load_checkpoint(path, device)
    if CATALOGUE_KEY not in checkpoint:
        raise ConfigError(f"{path}: has no serving catalogue (it predates recommend); retrain the run to serve it")
    hyper_parameters = checkpoint["hyper_parameters"]
    model: Recommender = instantiate(hyper_parameters["model"], num_users=hyper_parameters["num_users"],
                                     num_items=hyper_parameters["num_items"])  # fmt: skip
    prefix = "model."
    weights = {name[len(prefix):]: value for name, value in checkpoint["state_dict"].items() if name.startswith(prefix)}
    model.load_state_dict(weights)
    model.to(device).eval()
    return TrainedRun(model, Catalogue.from_state(checkpoint[CATALOGUE_KEY]), hyper_parameters, Path(path))
