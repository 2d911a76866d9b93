"""What a checkpoint trained on several ranks of prepared data records of its data: a reference, not a catalogue.

No rank holds every user's history, so the full `Catalogue` (each user's seen items) cannot be built
there. The item-sized part (ids, titles, training popularity) is at hand on every rank and serves
training (popularity, the projector); the rest is named by the prepared folder's manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from recsys_lightning.data.catalogue import STATE_VERSION

PREPARED_KEY = "prepared"  # the state's key holding `ShareSource.reference()`


@dataclass(frozen=True)
class CatalogueReference:
    """The items of prepared data and the reference (folder, manifest sha256) naming all of it."""

    item_ids: pd.Index
    popularity: Tensor
    titles: list[str] | None
    reference: dict[str, str]

    @classmethod
    def from_source(cls, source: Any) -> CatalogueReference:
        """From an open prepared source (`prepared.share.ShareSource`: item_ids, titles, item_train_counts,
        reference()), whether a rank's or the folder a checkpoint's state names."""
        return cls(pd.Index(source.item_ids), torch.from_numpy(source.item_train_counts), source.titles, source.reference())

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def title_of(self, items: list[int]) -> list[str]:
        return [self.titles[i] for i in items] if self.titles else [""] * len(items)

    def to_state(self) -> dict[str, Any]:
        """Strings only: what a checkpoint stores, resolved again through the prepared folder it names."""
        return {"version": STATE_VERSION, PREPARED_KEY: dict(self.reference)}

    def same_data(self, other: object) -> bool:
        """Whether `other` references the same prepared data (the same manifest, wherever the folder now is)."""
        return isinstance(other, CatalogueReference) and other.reference.get("manifest_sha256") == self.reference.get("manifest_sha256")
