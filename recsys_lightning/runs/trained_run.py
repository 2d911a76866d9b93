"""Rebuild a checkpoint's model and catalogue, building nothing its recorded config has not passed.

Serving, evaluate and training (a retriever's candidates for `sampler=retrieved`) all load a trained
run this way, so it sits below serving: training must not import serving.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.errors import ConfigError, RecsysError, first_line
from recsys_lightning.models.base import Recommender
from recsys_lightning.models.weights import WeightsMismatch, build_with_weights, check_weights
from recsys_lightning.runs.checkpoint_file import first_non_finite, load_checkpoint, recorded_catalogue, with_held_tables
from recsys_lightning.runs.safe_config import checked_module_hyper_parameters


@dataclass(frozen=True)
class TrainedRun:
    """A model in eval mode with the catalogue it was trained on."""

    model: Recommender
    catalogue: Catalogue
    hyper_parameters: dict[str, Any]
    checkpoint_path: Path

    @property
    def model_name(self) -> str:
        return str(self.hyper_parameters["model"]["_target_"]).rsplit(".", 1)[-1]


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> TrainedRun:
    """The model and catalogue of a checkpoint; its recorded config is checked before anything is built."""
    return trained_from(load_checkpoint(path, device), path, device)


def trained_from(checkpoint: dict[str, Any], path: str | Path, device: str | torch.device = "cpu") -> TrainedRun:
    """`load_trained` of a checkpoint already read with `load_checkpoint` (recommend reads it once to tell a
    re-ranker's run from a model's)."""
    catalogue = recorded_catalogue(checkpoint, path, "retrain the run to serve it")
    hyper_parameters = checked_module_hyper_parameters(checkpoint.get("hyper_parameters"), str(path))
    if (catalogue.num_users, catalogue.num_items) != (hyper_parameters["num_users"], hyper_parameters["num_items"]):
        raise ConfigError(
            f"{path}: its catalogue ({catalogue.num_users} users x {catalogue.num_items} items) does not match "
            f"its model ({hyper_parameters['num_users']} x {hyper_parameters['num_items']}); the file was altered"
        )
    with_held_tables(checkpoint, path, hyper_parameters)  # trainer=sharded: the tables beside the .ckpt
    weights = model_weights(checkpoint["state_dict"], path)
    model = rebuilt_model(hyper_parameters, weights, path)
    broken = first_non_finite(weights)
    if broken is not None:
        raise ConfigError(f"{path}: its weight model.{broken} holds NaN or infinite values; serve another checkpoint of the run")
    model.to(device).eval()
    return TrainedRun(model, catalogue, hyper_parameters, Path(path))


def model_weights(state_dict: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """The model's part of a module's state dict, names without `model.`; anything else is refused (a
    module keeps no other weights, so another name means the file was altered)."""
    prefix = "model."
    stray = next((name for name in state_dict if not name.startswith(prefix)), None)
    if stray is not None:
        raise ConfigError(f"{path}: its weight {stray[:80]!r} belongs to no model; the file was altered")
    return {name[len(prefix) :]: value for name, value in state_dict.items()}


def rebuilt_model(hyper_parameters: dict[str, Any], weights: dict[str, torch.Tensor], path: str | Path) -> Recommender:
    """The recorded model holding `weights`, built only once its names and shapes (found on the meta device)
    match them: a recorded config cannot ask for memory its weights do not already hold."""
    with _refused_as_config_error(path):
        return build_with_weights(hyper_parameters["model"], hyper_parameters["num_users"], hyper_parameters["num_items"], weights)


def check_weights_fit(hyper_parameters: dict[str, Any], weights: dict[str, torch.Tensor], path: str | Path) -> None:
    """`rebuilt_model`'s check alone, for callers that build the model themselves (evaluate builds a module)."""
    with _refused_as_config_error(path):
        check_weights(hyper_parameters["model"], hyper_parameters["num_users"], hyper_parameters["num_items"], weights)


@contextmanager
def _refused_as_config_error(path: str | Path) -> Iterator[None]:
    try:
        yield
    except WeightsMismatch as error:
        raise ConfigError(f"{path}: its weights do not fit its model config ({first_line(error)})") from error
    except RecsysError:
        raise
    except Exception as error:  # the constructor refused a recorded value (Hydra wraps it)
        cause = error.__cause__ or error
        raise ConfigError(f"{path}: its recorded model config cannot be built ({first_line(cause)}); the file was altered") from error


def torch_device(name: str) -> torch.device:
    """The device a trained run is loaded onto: `auto` is CUDA when there is one, `gpu` (Lightning's name,
    evaluate's accelerator) is CUDA; other names were checked by the entry point's config check."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda" if name == "gpu" else name)
