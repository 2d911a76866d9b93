"""A trained re-ranker run read back for serving, every part of its folder untrusted.

The ranker is the project's own LinearReranker, built here over the feature names the checkpoint records
once each is a feature of FEATURES and the weights have exactly the shapes those names give; nothing the
folder names is instantiated. The candidate count and EASE's l2 come from its `.hydra/config.yaml`, checked
as numbers in range (the ranker's retriever_z and log_rank are relative to a list of that length, so it is
served at the count it was trained on). Genre and year come from the data its recorded data config rebuilds,
checked to be the data it was trained on. The features are then those of the run's validation and test
lists: computed from the training rows its catalogue holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from recsys_lightning.build import build_datamodule
from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.errors import ConfigError, quote
from recsys_lightning.rerank import RERANKER_TARGETS
from recsys_lightning.rerank.features import FEATURES, NEEDS, CandidateFeatures, ItemSide, check_feature_names
from recsys_lightning.rerank.ranker import LinearReranker
from recsys_lightning.runs.checkpoint_file import recorded_catalogue
from recsys_lightning.runs.hydra_record import read_run_yaml, recorded_data_config
from recsys_lightning.runs.safe_config import RERANKER_PACKAGE
from recsys_lightning.runs.same_data import same_training_data

WEIGHT, BIAS = "model.weights.weight", "model.weights.bias"  # a LinearReranker's state_dict in its module


@dataclass(frozen=True)
class TrainedReranker:
    """A re-ranker run ready to serve: the ranker (eval mode, CPU), its catalogue, the candidate count it was
    trained on and the features of candidates. Read where a TrainedRun is (model, catalogue, model_name)."""

    model: LinearReranker
    catalogue: Catalogue
    candidates: int
    features: CandidateFeatures
    ks: list[int]
    checkpoint_path: Path

    @property
    def model_name(self) -> str:
        return type(self.model).__name__

    def scores(self, features: Tensor, present: Tensor) -> Tensor:
        """The ranker's scores [U, N] of candidate `features` [U, N, F] (`present` [U, N]: not padding), refused
        in one line where a present candidate's score is not finite: finite weights large enough overflow the
        sum, and NaN or infinite scores would rank nothing (a top 0) or an arbitrary order, unsaid."""
        if not torch.isfinite(features[present]).all():
            raise ConfigError(
                f"{self.checkpoint_path}: the candidates' features hold NaN or infinite values (EASE at the rerank.ease_l2 "
                "of the run's .hydra/config.yaml, or side features); restore the run folder as training wrote it"
            )
        scores = self.model(features)
        if not torch.isfinite(scores[present]).all():
            raise ConfigError(
                f"{self.checkpoint_path}: its weights give NaN or infinite scores to candidates (weights too large for "
                "float32 sums); the file was altered, serve another checkpoint of the run or retrain it"
            )
        return scores


def is_reranker_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    """Whether a checkpoint's recorded model is in the re-ranker package (checked further by `load_reranker`)."""
    hyper_parameters = checkpoint.get("hyper_parameters")
    model = hyper_parameters.get("model") if isinstance(hyper_parameters, Mapping) else None
    return isinstance(model, Mapping) and str(model.get("_target_", "")).startswith(RERANKER_PACKAGE)


def load_reranker(checkpoint: Mapping[str, Any], path: Path, run_dir: Path) -> TrainedReranker:
    """The re-ranker of a checkpoint read with `load_checkpoint` (on the CPU) from the run folder `run_dir`;
    one line naming the file and key for anything out of place."""
    names = _feature_names(checkpoint.get("hyper_parameters"), path)
    weight, bias = _weights(checkpoint.get("state_dict"), len(names), path)
    catalogue = recorded_catalogue(checkpoint, path, "retrain the run to serve it")
    if not isinstance(catalogue, Catalogue):
        raise ConfigError(f"{path}: records a prepared folder, not a catalogue as a re-ranker run does; the file was altered")
    num_items = checkpoint["hyper_parameters"].get("num_items")
    if num_items != catalogue.num_items:
        raise ConfigError(f"{path}: num_items is {quote(num_items)}, its catalogue has {catalogue.num_items} items; the file was altered")
    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{config_path}: missing; serving a re-ranker needs the run's config (its candidate count and rerank.ease_l2)")
    recorded = read_run_yaml(config_path)
    candidates = _recorded(recorded, "retrieval.candidates", config_path)
    if isinstance(candidates, bool) or not isinstance(candidates, int) or not 1 <= candidates <= catalogue.num_items:
        raise ConfigError(
            f"{config_path}: retrieval.candidates is {quote(candidates)}, not an integer in [1, {catalogue.num_items}] "
            "(the run's items); the file was altered, restore it or retrain the run"
        )
    trained_on = checkpoint["hyper_parameters"].get("candidates")  # absent from checkpoints written before it was recorded
    if trained_on is not None and trained_on != candidates:
        raise ConfigError(
            f"{config_path}: retrieval.candidates is {quote(candidates)}, the checkpoint {path.name} was trained on lists of "
            f"{quote(trained_on)}; the file was altered, restore it or retrain the run"
        )
    recorded_features = _recorded(recorded, "model.features", config_path)
    if recorded_features is not None and recorded_features != names:
        raise ConfigError(
            f"{config_path}: model.features is {quote(recorded_features)}, the checkpoint {path.name} holds weights for "
            f"{quote(names)}; one of the two was altered, serve the run folder as training wrote it"
        )
    ease_l2 = _recorded(recorded, "rerank.ease_l2", config_path)
    if isinstance(ease_l2, bool) or not isinstance(ease_l2, (int, float)) or not (math.isfinite(ease_l2) and ease_l2 > 0):
        raise ConfigError(f"{config_path}: rerank.ease_l2 is {quote(ease_l2)}, not a finite number > 0; the file was altered")
    trained_l2 = checkpoint["hyper_parameters"].get("ease_l2")  # absent from checkpoints written before it was recorded
    if trained_l2 is not None and trained_l2 != ease_l2:
        raise ConfigError(
            f"{config_path}: rerank.ease_l2 is {quote(ease_l2)}, the checkpoint {path.name} was trained with {quote(trained_l2)}; "
            "the file was altered, restore it or retrain the run"
        )
    ks = checkpoint["hyper_parameters"].get("ks")
    in_range = isinstance(ks, (list, tuple)) and all(type(k) is int and 1 <= k <= candidates for k in ks)
    if not ks or not in_range:
        raise ConfigError(f"{path}: ks is {quote(ks)}, not a list of cut-offs in [1, {candidates}] ; the file was altered")
    ranker = LinearReranker(names)
    with torch.no_grad():
        ranker.weights.weight.copy_(weight)
        ranker.weights.bias.copy_(bias)
    items = _item_side(names, catalogue, path, run_dir)
    try:
        features = CandidateFeatures(names, catalogue.seen_in(["train"]), items, float(ease_l2))
    except ConfigError as error:  # EASE's own message names model.l2, a key this run does not have
        raise ConfigError(
            f"{config_path}: rerank.ease_l2 is {quote(ease_l2)}, at which EASE cannot be fitted ({error}); the file was altered, restore it"
        ) from error
    return TrainedReranker(ranker.eval(), catalogue, candidates, features, list(ks), path)


def _feature_names(hyper_parameters: Any, path: Path) -> list[str]:
    """model.features of a recorded LinearReranker: known feature names, each once, and no other model key."""
    model = hyper_parameters.get("model") if isinstance(hyper_parameters, Mapping) else None
    target = model.get("_target_") if isinstance(model, Mapping) else None
    if target not in RERANKER_TARGETS:
        raise ConfigError(
            f"{path}: model._target_ is {quote(target)}, not a re-ranker this project serves ({', '.join(sorted(RERANKER_TARGETS))}); "
            "refusing to build it"
        )
    stray = sorted(str(key) for key in model if key not in ("_target_", "features"))
    if stray:
        raise ConfigError(f"{path}: model has the key {quote(stray[0])}, which LinearReranker does not take; refusing to build it")
    names = model.get("features")
    if not isinstance(names, (list, tuple)) or not 1 <= len(names) <= len(FEATURES) or len(set(map(str, names))) != len(names):
        raise ConfigError(f"{path}: model.features is {quote(names)}, not a list of distinct feature names; refusing to build it")
    unknown = [name for name in names if not isinstance(name, str) or name not in FEATURES]
    if unknown:
        raise ConfigError(f"{path}: model.features names {quote(unknown[0])}, no feature of {', '.join(FEATURES)}; refusing to build it")
    return list(names)


def _weights(state_dict: Any, count: int, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The ranker's weight [1, count] and bias [1], finite floats, and no other tensor."""
    if not isinstance(state_dict, Mapping) or set(state_dict) != {WEIGHT, BIAS}:
        keys = sorted(map(str, state_dict)) if isinstance(state_dict, Mapping) else state_dict
        raise ConfigError(f"{path}: its weights are {quote(keys)}, not a LinearReranker's ({WEIGHT}, {BIAS}); the file was altered")
    weight, bias = state_dict[WEIGHT], state_dict[BIAS]
    for name, tensor, shape in ((WEIGHT, weight, (1, count)), (BIAS, bias, (1,))):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tuple(tensor.shape) != shape:
            found = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ConfigError(f"{path}: {name} is {found}, not a float tensor of shape {shape} ({count} features); the file was altered")
        if not torch.isfinite(tensor).all():
            raise ConfigError(f"{path}: {name} holds NaN or infinite values; serve another checkpoint of the run")
    return weight, bias


def _recorded(recorded: Any, key: str, config_path: Path) -> Any:
    """The value at `key`, resolved (a list or mapping as plain Python), or None where it is absent."""
    try:
        value = OmegaConf.select(recorded, key, default=None)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    except Exception as error:  # an interpolation that cannot resolve
        raise ConfigError(f"{config_path}: cannot read {key} ({type(error).__name__}); the run folder is damaged") from error


def _item_side(names: list[str], catalogue: Catalogue, path: Path, run_dir: Path) -> ItemSide:
    """Genre flags and years of the items, from the data the run's recorded data config rebuilds (only when a
    feature needs them), checked to be the data the checkpoint was trained on."""
    if not any(name in NEEDS for name in names):
        return ItemSide.from_table(None, catalogue.num_items)
    data = build_datamodule(recorded_data_config(run_dir))
    data.setup("fit")
    if not same_training_data(catalogue, data.training_data):
        raise ConfigError(
            f"{path}: trained on other data than {run_dir / '.hydra' / 'config.yaml'} rebuilds (other ids or training pairs); "
            "serve a checkpoint with the run folder it came from"
        )
    check_feature_names(names, data.training_data.item_features)
    return ItemSide.from_table(data.training_data.item_features, catalogue.num_items)
