"""Whether this machine has the device a config asks for (CUDA, MPS, TPU), checked before any data is
loaded: torch and Lightning otherwise fail only after it, and for a TPU in a many-line Hydra error."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from recsys_lightning.errors import ConfigError
from recsys_lightning.ranges import shown


def check_cuda_available(key: str, device: Any) -> None:
    """A device asked for (cuda, cuda:<index>, gpu; mps, tpu) must exist here: torch and Lightning fail
    only later, after the data is loaded."""
    if device in ("mps", "tpu"):
        missing = _missing_backend(device)
        if missing:
            raise ConfigError(f"{key}={device}: {missing}; use {key}=cpu or auto")
        return
    if not (isinstance(device, str) and device.split(":")[0] in ("cuda", "gpu")):
        return
    available = _cuda_devices()
    if available == 0:
        raise ConfigError(f"{key}={device}: no CUDA device is visible here; use {key}=cpu (or auto)")
    if ":" in device and int(device.split(":")[1]) >= available:
        raise ConfigError(f"{key}={device}: only {available} CUDA device(s) here, cuda:0 to cuda:{available - 1}")


def _missing_backend(accelerator: str) -> str:
    """Why Lightning's mps or tpu accelerator cannot run here, '' when it can (as far as can be told
    without starting it: a TPU also needs the machine to have one)."""
    if accelerator == "mps":
        return "" if torch.backends.mps.is_available() else "Apple's MPS backend is not available here (macOS on Apple silicon only)"
    return "" if importlib.util.find_spec("torch_xla") is not None else "a TPU needs torch_xla, which is not installed here"


def check_trainer_devices(accelerator: Any, devices: Any) -> None:
    """On CUDA, Lightning fails after the data is loaded when trainer.devices asks for more GPUs than exist."""
    available = _cuda_devices()
    if accelerator not in ("gpu", "cuda") and not (accelerator == "auto" and available):
        return
    wanted = max(devices) + 1 if isinstance(devices, list) else devices if isinstance(devices, int) else 1
    if wanted > available:
        raise ConfigError(
            f"trainer.devices={shown(devices)}: only {available} CUDA device(s) here; lower it or use trainer.accelerator=cpu"
        )


def _cuda_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
