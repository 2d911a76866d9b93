"""Whether a checkpoint can resume this run: Lightning's own restore fails deep inside (or, worse,
quietly mixes two data sets in one folder) when it cannot, so these checks run first and say why."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from recsys_lightning.data.catalogue_reference import CatalogueReference
from recsys_lightning.errors import ConfigError
from recsys_lightning.models.weights import weight_mismatch
from recsys_lightning.runs.checkpoint_file import recorded_catalogue
from recsys_lightning.runs.run_config import recorded_state
from recsys_lightning.runs.same_data import same_training_data

if TYPE_CHECKING:
    from recsys_lightning.module import RecommenderModule

# What Lightning reads back when it resumes; a checkpoint without them fails deep inside Lightning.
RESUME_KEYS = {
    "epoch": int,
    "global_step": int,
    "loops": dict,
    "callbacks": dict,
    "optimizer_states": list,
    "lr_schedulers": list,
    "pytorch-lightning_version": str,
}
CHECKPOINT_PATH_FIELDS = ("best_model_path", "last_model_path", "kth_best_model_path")
# The saved fields of Lightning's callbacks that it uses without checking.
CALLBACK_STATE_TYPES = {
    "EarlyStopping": {"wait_count": (int,), "stopped_epoch": (int,), "best_score": (torch.Tensor,), "patience": (int,)},
    "ModelCheckpoint": {
        "best_model_score": (torch.Tensor, type(None)),
        "kth_value": (torch.Tensor, float, type(None)),
        "best_k_models": (dict,),
        "dirpath": (str,),
    },
}


def check_resumable(checkpoint: dict[str, Any], path: Path) -> None:
    """A full training checkpoint, whose ModelCheckpoint records name only files in their own folder.

    Lightning deletes a ModelCheckpoint's previous file when it writes the next one, judging "inside
    the folder" by the path's text: a crafted record such as `<dir>/../../file` would delete any file.
    """
    for key, kind in RESUME_KEYS.items():
        if not isinstance(checkpoint.get(key), kind) or isinstance(checkpoint.get(key), bool):
            raise ConfigError(
                f"{path}: not a resumable training checkpoint (its {key!r} is missing or not a {kind.__name__}); "
                "resume from a checkpoint this project wrote (checkpoints/last.ckpt or epochNNN.ckpt)"
            )
    for name, state in checkpoint["callbacks"].items():
        _check_state_types(str(name), state, path)
        if not str(name).startswith("ModelCheckpoint"):
            continue
        dirpath = state.get("dirpath") if isinstance(state, dict) else None
        recorded = [state.get(field) for field in CHECKPOINT_PATH_FIELDS] + list(state.get("best_k_models") or {}) if dirpath else []
        if not isinstance(dirpath, str) or not all(_is_file_in(value, dirpath) for value in recorded if value):
            raise ConfigError(
                f"{path}: its checkpoint records name files outside their checkpoint folder; "
                "the file was altered, resume from another checkpoint"
            )


def _check_state_types(name: str, state: Any, path: Path) -> None:
    """Lightning's own callbacks trust their saved state; a value of the wrong type fails mid-training."""
    expected = next((fields for prefix, fields in CALLBACK_STATE_TYPES.items() if name.startswith(prefix)), None)
    if expected is None:
        return
    bad = not isinstance(state, dict) or [
        field for field, kinds in expected.items() if field in state and not _is_kind(state[field], kinds)
    ]
    if (
        isinstance(state, dict)
        and not bad
        and not all(isinstance(score, torch.Tensor) for score in (state.get("best_k_models") or {}).values())
    ):
        bad = ["best_k_models"]
    if bad:
        field = bad[0] if isinstance(bad, list) else "its state"
        raise ConfigError(
            f"{path}: the saved state of {name.split('{')[0]} ({field}) has the wrong type; "
            "the file was altered, resume from another checkpoint"
        )


def _is_kind(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and int in kinds:
        return value >= 0
    return isinstance(value, kinds)


def _is_file_in(value: Any, folder: str) -> bool:
    if not isinstance(value, str) or ".." in Path(value).parts:
        return False
    return Path(value).parent == Path(folder) and Path(value).resolve().parent == Path(folder).resolve()


def check_resume_fits(checkpoint: dict[str, Any], path: Path, module: RecommenderModule) -> None:
    """The checkpoint was trained with this run's model shapes, data (same raw ids, same training
    pairs) and optimizer kind; otherwise one line saying what differs."""
    # trainer=sharded builds its row tables on the meta device and keeps them beside the .ckpt, read by their own checks.
    held = {f"model.{name}" for name, table in module.model.named_parameters() if table.is_meta}
    expected = {name: value for name, value in module.state_dict().items() if name not in held}
    problem = weight_mismatch(expected, checkpoint["state_dict"])
    if problem is not None:
        raise ConfigError(
            f"ckpt_path={path}: it was trained with another model or data ({problem}); resume with that run's "
            "overrides, or drop ckpt_path to start fresh"
        )
    on_ranks = isinstance(module.data.catalogue, CatalogueReference)  # several ranks compare references, never every part
    catalogue = recorded_catalogue(
        checkpoint, path, "resume from a checkpoint this version of the project wrote", where=f"ckpt_path={path}", resolve=not on_ranks
    )
    if not same_training_data(catalogue, module.data):
        raise ConfigError(
            f"ckpt_path={path}: it was trained on other data (its users, items or training pairs differ from this "
            "run's); resume with that run's data overrides, or drop ckpt_path to start fresh"
        )
    if not held:  # trainer=sharded: which tables Lightning's optimizer steps is known only once TorchRec holds them
        _check_same_optimizer(checkpoint, path, module)


def _check_same_optimizer(checkpoint: dict[str, Any], path: Path, module: Any) -> None:
    """Optimizer state of another kind (Adam's moments for Adagrad) fails inside torch with a KeyError."""
    configured = module.configure_optimizers()
    if configured is None:  # a closed-form model: no optimizer, no state to match
        return
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    wanted = _group_keys(optimizer.state_dict()["param_groups"])
    states = checkpoint["optimizer_states"]
    found = _group_keys(states[0].get("param_groups", [])) if len(states) == 1 and isinstance(states[0], dict) else None
    if found == wanted and not _same_value_kinds(states[0]["param_groups"], optimizer.state_dict()["param_groups"]):
        raise ConfigError(
            f"ckpt_path={path}: its optimizer settings have the wrong types (e.g. a learning rate that is not a "
            "number); the file was altered, resume from another checkpoint"
        )
    if found != wanted:
        raise ConfigError(
            f"ckpt_path={path}: it was trained with another optimizer than this run's {type(optimizer).__name__}; "
            "resume with that run's optimizer overrides, or drop ckpt_path to start fresh"
        )
    scheduler = configured["lr_scheduler"]["scheduler"] if isinstance(configured, dict) else None
    saved = checkpoint["lr_schedulers"]
    if len(saved) != (scheduler is not None):
        raise ConfigError(
            f"ckpt_path={path}: it was trained with{'out' if not saved else ''} a learning-rate "
            "scheduler, unlike this run; resume with that run's scheduler override"
        )
    if scheduler is not None and (not isinstance(saved[0], dict) or sorted(saved[0]) != sorted(scheduler.state_dict())):
        raise ConfigError(
            f"ckpt_path={path}: it was trained with another learning-rate scheduler than this run's "
            f"{type(scheduler).__name__}; resume with that run's scheduler override"
        )


def check_resume_callbacks(checkpoint: dict[str, Any], path: Path, callbacks: list[Any], max_epochs: int, may_finish: bool = False) -> None:
    """Lightning restores early stopping's patience and the checkpoints' monitor from the checkpoint (or,
    when a monitor or mode changed, silently starts them afresh): refuse such a change, and a
    `trainer.max_epochs` the checkpoint has already reached, unless `may_finish`: a fit that ended (at
    max_epochs, or by early stopping) but was stopped before its test is then resumed to validate and test."""
    done = checkpoint["epoch"] + 1
    stopped_early = (recorded_state(checkpoint) or {}).get("should_stop") is True
    finished = max_epochs == done or stopped_early
    if max_epochs < done or (finished and not may_finish):
        if stopped_early and max_epochs >= done:
            raise ConfigError(
                f"ckpt_path={path}: early stopping ended its training after {done} epochs and the run was tested "
                "(metrics.json); nothing is left to resume: start a new run folder to train it differently"
            )
        raise ConfigError(
            f"ckpt_path={path}: it already holds {done} epochs, so trainer.max_epochs={max_epochs} leaves nothing to "
            f"train; raise trainer.max_epochs above {done}"
        )
    saved = checkpoint["callbacks"]
    for callback in callbacks:
        if not isinstance(callback, (EarlyStopping, ModelCheckpoint)) or callback.state_key in saved:
            if (
                isinstance(callback, EarlyStopping)
                and saved.get(callback.state_key, {}).get("patience", callback.patience) != callback.patience
            ):
                raise ConfigError(
                    f"ckpt_path={path}: this run changes callbacks.early_stopping.patience (the checkpoint's "
                    f"{saved[callback.state_key]['patience']} would be restored); resume with that run's patience"
                )
            continue
        kind = "early stopping's" if isinstance(callback, EarlyStopping) else "a checkpoint callback's"
        raise ConfigError(
            f"ckpt_path={path}: this run changes {kind} monitor or mode ({callback.monitor}); a resumed run "
            "would start it afresh: resume with that run's monitor and mode"
        )


def _group_keys(param_groups: list[dict[str, Any]]) -> list[list[str]]:
    """An optimizer's hyper-parameter names per group, which tell its kind; `initial_lr` is a scheduler's."""
    return [sorted(key for key in group if key != "initial_lr") for group in param_groups]


def _same_value_kinds(saved: list[dict[str, Any]], fresh: list[dict[str, Any]]) -> bool:
    """Each saved hyper-parameter has the kind of the fresh optimizer's (number, flag, tuple of numbers)."""

    def kind(value: Any) -> str:
        if isinstance(value, bool) or value is None:
            return repr(value) if value is None else "flag"
        if isinstance(value, (int, float)):
            return "number"
        if isinstance(value, (list, tuple)):
            return "numbers" if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) else "list"
        return type(value).__name__

    return all(
        kind(group[key]) == kind(value)
        for group, reference in zip(saved, fresh)
        for key, value in reference.items()
        if key not in ("params", "initial_lr") and key in group
    )
