"""Whether a checkpoint can resume this run: Lightning's own restore fails deep inside (or, worse,
quietly mixes two data sets in one folder) when it cannot, so these checks run first and say why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from recsys_lightning.errors import ConfigError
from recsys_lightning.serving.checkpoint import CATALOGUE_KEY, catalogue_from_checkpoint


# What Lightning reads back when it resumes; a checkpoint without them fails deep inside Lightning.
RESUME_KEYS = {"epoch": int, "global_step": int, "loops": dict, "callbacks": dict, "optimizer_states": list,
               "lr_schedulers": list, "pytorch-lightning_version": str}  # fmt: skip
CHECKPOINT_PATH_FIELDS = ("best_model_path", "last_model_path", "kth_best_model_path")


def check_resumable(checkpoint: dict[str, Any], path: Path) -> None:
    """A full training checkpoint, whose ModelCheckpoint records name only files in their own folder.

    Lightning deletes a ModelCheckpoint's previous file when it writes the next one, judging "inside
    the folder" by the path's text: a crafted record such as `<dir>/../../file` would delete any file.
    """
    for key, kind in RESUME_KEYS.items():
        if not isinstance(checkpoint.get(key), kind) or isinstance(checkpoint.get(key), bool):
            raise ConfigError(f"{path}: not a resumable training checkpoint (its {key!r} is missing or not a {kind.__name__}); "
                              "resume from a checkpoint this project wrote (checkpoints/last.ckpt or epochNNN.ckpt)")  # fmt: skip
    for name, state in checkpoint["callbacks"].items():
        if not str(name).startswith("ModelCheckpoint"):
            continue
        dirpath = state.get("dirpath") if isinstance(state, dict) else None
        recorded = [state.get(field) for field in CHECKPOINT_PATH_FIELDS] + list(state.get("best_k_models") or {}) if dirpath else []
        if not isinstance(dirpath, str) or not all(_is_file_in(value, dirpath) for value in recorded if value):
            raise ConfigError(f"{path}: its checkpoint records name files outside their checkpoint folder; "
                              "the file was altered, resume from another checkpoint")  # fmt: skip


def _is_file_in(value: Any, folder: str) -> bool:
    if not isinstance(value, str) or ".." in Path(value).parts:
        return False
    return Path(value).parent == Path(folder) and Path(value).resolve().parent == Path(folder).resolve()


def check_resume_fits(checkpoint: dict[str, Any], path: Path, module: Any, datamodule: Any) -> None:
    """The checkpoint was trained with this run's model shapes, data (same raw ids, same training
    pairs) and optimizer kind; otherwise one line saying what differs."""
    saved = checkpoint["state_dict"]
    expected = module.state_dict()
    for name, tensor in expected.items():
        if name not in saved or saved[name].shape != tensor.shape:
            found = tuple(saved[name].shape) if name in saved else "nothing"
            raise ConfigError(f"ckpt_path={path}: it was trained with another model or data ({name} is {found}, this run needs "
                              f"{tuple(tensor.shape)}); resume with that run's overrides, or drop ckpt_path to start fresh")  # fmt: skip
    unknown = sorted(set(saved) - set(expected))
    if unknown:
        raise ConfigError(f"ckpt_path={path}: it holds weights this model lacks ({unknown[0]}); resume with that run's model overrides")
    if CATALOGUE_KEY in checkpoint and not _same_training_data(catalogue_from_checkpoint(checkpoint[CATALOGUE_KEY], path), datamodule):
        raise ConfigError(f"ckpt_path={path}: it was trained on other data (its users, items or training pairs differ from this "
                          "run's); resume with that run's data overrides, or drop ckpt_path to start fresh")  # fmt: skip
    _check_same_optimizer(checkpoint, path, module)


def _same_training_data(catalogue: Any, datamodule: Any) -> bool:
    interactions = datamodule.interactions
    if not (catalogue.user_ids.equals(pd.Index(interactions.user_ids)) and catalogue.item_ids.equals(pd.Index(interactions.item_ids))):
        return False
    trained = catalogue.seen_in(["train"])
    current = datamodule.train_positives
    return torch.equal(trained.indptr.long(), current.indptr.long()) and torch.equal(trained.indices.long(), current.indices.long())


def _check_same_optimizer(checkpoint: dict[str, Any], path: Path, module: Any) -> None:
    """Optimizer state of another kind (Adam's moments for Adagrad) fails inside torch with a KeyError."""
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    wanted = _group_keys(optimizer.state_dict()["param_groups"])
    states = checkpoint["optimizer_states"]
    found = _group_keys(states[0].get("param_groups", [])) if len(states) == 1 and isinstance(states[0], dict) else None
    if found != wanted:
        raise ConfigError(f"ckpt_path={path}: it was trained with another optimizer than this run's {type(optimizer).__name__}; "
                          "resume with that run's optimizer overrides, or drop ckpt_path to start fresh")  # fmt: skip
    if len(checkpoint["lr_schedulers"]) != (1 if isinstance(configured, dict) else 0):
        raise ConfigError(f"ckpt_path={path}: it was trained with{'out' if not checkpoint['lr_schedulers'] else ''} a learning-rate "
                          "scheduler, unlike this run; resume with that run's scheduler override")  # fmt: skip


def _group_keys(param_groups: list[dict[str, Any]]) -> list[list[str]]:
    """An optimizer's hyper-parameter names per group, which tell its kind; `initial_lr` is a scheduler's."""
    return [sorted(key for key in group if key != "initial_lr") for group in param_groups]
