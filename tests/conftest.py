"""Shared fixtures: small in-memory interaction data and a DataModule over it."""

from __future__ import annotations

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
