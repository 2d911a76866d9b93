"""Find a run's checkpoint and rebuild its model and catalogue without unpickling arbitrary objects."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from recsys_lightning.errors import ConfigError, first_line
from recsys_lightning.models.base import Recommender
from recsys_lightning.safe_config import checked_module_hyper_parameters
from recsys_lightning.serving.catalogue import STATE_VERSION, Catalogue

CATALOGUE_KEY = "catalogue"
BEST_CHECKPOINT_KEY = "best_checkpoint"
METRICS_LIMIT = 1 << 20  # bytes; a real metrics.json is about 1 KiB
CHECKPOINT_REMEDY = "pass checkpoint=last or checkpoint=<path>"


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


def find_checkpoint(run_dir: str | Path, which: str = "best") -> Path:
    """`best` (the one metrics.json names, else the only epochNNN.ckpt), `last`, or a path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir={run_dir}: no such folder; point it at a training run (outputs/runs/<date>/<time>_<name>)")
    if which == "last":
        candidates = [run_dir / "checkpoints" / "last.ckpt"]
    elif which == "best":
        recorded = read_run_metrics(run_dir, remedy=CHECKPOINT_REMEDY).get(BEST_CHECKPOINT_KEY)
        candidates = [run_dir / recorded] if recorded else sorted((run_dir / "checkpoints").glob("epoch*.ckpt"))
    else:
        if not Path(which).is_file():
            problem = "is a folder, not a checkpoint file" if Path(which).is_dir() else "no such file"
            raise ConfigError(f"checkpoint={str(which)[:200]}: {problem}; use best, last or the path of a .ckpt file")
        candidates = [Path(which)]
    if len(candidates) != 1 or not candidates[0].is_file():
        found = ", ".join(str(path) for path in candidates) or "none"
        raise ConfigError(f"{run_dir}: cannot find the {which!r} checkpoint (found: {found:.200}); {CHECKPOINT_REMEDY}")
    return candidates[0]


def read_run_metrics(run_dir: str | Path, remedy: str = "retrain the run or restore the file") -> dict[str, Any]:
    """metrics.json as a dict ({} when the run has none), or one line naming the file and `remedy`.

    The file is untrusted: it must be a JSON object of at most 1 MiB, and its `best_checkpoint`, if
    present, a relative path to a file inside `<run_dir>/checkpoints/` (a crafted one could point
    evaluate or recommend at any file on the machine).
    """
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return {}

    def damaged(detail: str) -> ConfigError:
        return ConfigError(f"{path}: metrics.json is damaged ({detail}); {remedy}")

    if not path.is_file() or path.stat().st_size > METRICS_LIMIT:
        raise damaged("not a regular file of at most 1 MiB")
    try:
        recorded = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise damaged(f"not valid JSON: {first_line(error, 120)}") from error
    if not isinstance(recorded, dict):
        raise damaged(f"a JSON {type(recorded).__name__}, not an object")
    best = recorded.get(BEST_CHECKPOINT_KEY)
    if best is not None and not _names_a_checkpoint_inside(best, Path(run_dir)):
        raise damaged(f"{BEST_CHECKPOINT_KEY} is {str(best)[:80]!r}, not the name of a file in checkpoints/")
    return recorded


def _names_a_checkpoint_inside(value: Any, run_dir: Path) -> bool:
    if not isinstance(value, str) or not value or ".." in Path(value).parts or Path(value).is_absolute():
        return False
    folder = (run_dir / "checkpoints").resolve()
    return Path(value).parts[0] == "checkpoints" and (run_dir / value).resolve().parent == folder


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """`torch.load(weights_only=True)`: tensors and plain containers only, so loading cannot run code.

    What comes back is still untrusted: it is a mapping with a `state_dict` of tensors, and nothing
    in it is built before `checked_module_hyper_parameters` or `checked_component` has passed it.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise ConfigError(f"{path}: empty file (0 bytes), not a checkpoint; it was cut off while being written")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConfigError(f"{path}: refused, it holds pickled objects beyond tensors and plain data, or is not a checkpoint at all "
                          f"({first_line(error, 120)})") from error  # fmt: skip
    except Exception as error:  # torch reports truncated or foreign files as RuntimeError, EOFError, ValueError, ...
        raise ConfigError(f"{path}: not a readable checkpoint, it may be truncated ({first_line(error, 120)})") from error
    state_dict = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise ConfigError(f"{path}: not a training checkpoint of this project (no state_dict of tensors)")
    return checkpoint


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> TrainedRun:
    """The model and catalogue of a checkpoint; its recorded config is checked before anything is built."""
    checkpoint = load_checkpoint(path, device)
    if CATALOGUE_KEY not in checkpoint:
        raise ConfigError(f"{path}: has no serving catalogue (it predates recommend); retrain the run to serve it")
    hyper_parameters = checked_module_hyper_parameters(checkpoint.get("hyper_parameters"), str(path))
    catalogue = catalogue_from_checkpoint(checkpoint[CATALOGUE_KEY], path)
    if (catalogue.num_users, catalogue.num_items) != (hyper_parameters["num_users"], hyper_parameters["num_items"]):
        raise ConfigError(f"{path}: its catalogue ({catalogue.num_users} users x {catalogue.num_items} items) does not match "
                          f"its model ({hyper_parameters['num_users']} x {hyper_parameters['num_items']}); the file was altered")  # fmt: skip
    model: Recommender = instantiate(hyper_parameters["model"], num_users=hyper_parameters["num_users"],
                                     num_items=hyper_parameters["num_items"])  # fmt: skip
    prefix = "model."
    weights = {name[len(prefix):]: value for name, value in checkpoint["state_dict"].items() if name.startswith(prefix)}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise ConfigError(f"{path}: its weights do not fit its model config ({first_line(error)})") from error
    broken = next((name for name, value in weights.items() if value.is_floating_point() and not torch.isfinite(value).all()), None)
    if broken is not None:
        raise ConfigError(f"{path}: its weight model.{broken} holds NaN or infinite values; serve another checkpoint of the run")
    model.to(device).eval()
    return TrainedRun(model, catalogue, hyper_parameters, Path(path))


def catalogue_from_checkpoint(state: Any, path: str | Path) -> Catalogue:
    """The serving catalogue, refused with one line when it is from another version or malformed."""
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        found = state.get("version") if isinstance(state, dict) else type(state).__name__
        raise ConfigError(f"{path}: its serving catalogue is version {found!r:.40}, this code reads version {STATE_VERSION}; "
                          "retrain the run with this version")  # fmt: skip
    try:
        catalogue = Catalogue.from_state(state)
        consistent = (len(catalogue.seen.indptr) == catalogue.num_users + 1 and len(catalogue.popularity) == catalogue.num_items
                      and int(catalogue.seen.indptr[-1]) == len(catalogue.seen.indices)
                      and (len(catalogue.seen.indices) == 0 or 0 <= int(catalogue.seen.indices.min()) <= int(catalogue.seen.indices.max()) < catalogue.num_items)
                      and (catalogue.titles is None or len(catalogue.titles) == catalogue.num_items))  # fmt: skip
    except Exception as error:  # a crafted catalogue can fail anywhere in from_state
        raise ConfigError(f"{path}: its serving catalogue is malformed ({type(error).__name__}: {first_line(error)})") from error
    if not consistent:
        raise ConfigError(f"{path}: its serving catalogue is inconsistent (index sizes disagree); the file was altered")
    return catalogue
