"""Shared fixtures: small in-memory interaction data and a DataModule over it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_lightning.data.datamodule import InteractionDataModule, LoadedInteractions


def random_interactions(num_users: int, num_items: int, per_user: int, seed: int = 0) -> pd.DataFrame:
    """`per_user` distinct items per user with increasing timestamps and ratings 1-5."""
    rng = np.random.default_rng(seed)
    items = np.stack([rng.choice(num_items, per_user, replace=False) for _ in range(num_users)])
    return pd.DataFrame(
        {
            "user_id": np.repeat(np.arange(num_users) + 100, per_user),
            "item_id": items.reshape(-1) + 1000,
            "rating": rng.integers(1, 6, num_users * per_user).astype(np.float32),
            "timestamp": rng.permutation(num_users * per_user).astype(np.int64),
        }
    )


class FrameDataModule(InteractionDataModule):
    """A DataModule over a DataFrame held in memory."""

    def __init__(self, frame: pd.DataFrame, **kwargs) -> None:
        super().__init__(**kwargs)
        self.frame = frame

    def load(self) -> LoadedInteractions:
        return LoadedInteractions(self.frame, pd.DataFrame({"item_id": [], "title": []}), source="memory")


@pytest.fixture
def small_frame() -> pd.DataFrame:
    return random_interactions(num_users=40, num_items=60, per_user=15)


ROOT = Path(__file__).resolve().parents[1]


def run_module(module: str, *overrides: str, fault_injection: bool = False) -> subprocess.CompletedProcess:
    """`python -m <module> overrides...` from the project root, as a user runs it; with
    `fault_injection` the callbacks of tests/fault_injection.py can be added from the command line."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    if fault_injection:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


@pytest.fixture(scope="session")
def movielens_run(tmp_path_factory) -> Path:
    """One short MF/BPR run on real ML-100K through the training entry point, shared by the tests
    that read its outputs (metrics, checkpoints, serving, evaluation)."""
    output_dir = tmp_path_factory.mktemp("movielens_run")
    result = run_module("recsys_lightning.train", "trainer.max_epochs=3", "callbacks.progress_bar.refresh_rate=0",
                        f"paths.output_dir={output_dir}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = [path.parent for path in output_dir.glob("runs/*/*/.hydra")]
    assert len(run_dirs) == 1, run_dirs
    return run_dirs[0]
