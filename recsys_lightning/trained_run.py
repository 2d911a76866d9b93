"""Rebuild a checkpoint's model and catalogue, building nothing its recorded config has not passed.

Serving, evaluate and training (a retriever's candidates for `sampler=retrieved`) all load a trained
run this way, so it sits below serving: training must not import serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recsys_lightning.checkpoint_file import CATALOGUE_KEY, catalogue_from_checkpoint, first_non_finite, load_checkpoint
from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.errors import ConfigError, first_line
from recsys_lightning.models.base import Recommender, build_recommender
from recsys_lightning.safe_config import checked_module_hyper_parameters


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
    checkpoint = load_checkpoint(path, device)
    if CATALOGUE_KEY not in checkpoint:
        raise ConfigError(f"{path}: has no serving catalogue (it predates recommend); retrain the run to serve it")
    hyper_parameters = checked_module_hyper_parameters(checkpoint.get("hyper_parameters"), str(path))
    catalogue = catalogue_from_checkpoint(checkpoint[CATALOGUE_KEY], path)
    if (catalogue.num_users, catalogue.num_items) != (hyper_parameters["num_users"], hyper_parameters["num_items"]):
        raise ConfigError(
            f"{path}: its catalogue ({catalogue.num_users} users x {catalogue.num_items} items) does not match "
            f"its model ({hyper_parameters['num_users']} x {hyper_parameters['num_items']}); the file was altered"
        )
    model = build_recommender(hyper_parameters["model"], hyper_parameters["num_users"], hyper_parameters["num_items"])
    prefix = "model."
    weights = {name[len(prefix) :]: value for name, value in checkpoint["state_dict"].items() if name.startswith(prefix)}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise ConfigError(f"{path}: its weights do not fit its model config ({first_line(error)})") from error
    broken = first_non_finite(weights)
    if broken is not None:
        raise ConfigError(f"{path}: its weight model.{broken} holds NaN or infinite values; serve another checkpoint of the run")
    model.to(device).eval()
    return TrainedRun(model, catalogue, hyper_parameters, Path(path))
