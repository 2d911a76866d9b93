"""The contract between data and training: what a set-up DataModule hands the LightningModule."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.data.catalogue_reference import CatalogueReference
from recsys_lightning.data.features import FeatureTable
from recsys_lightning.data.positives import TrainingPositives


@dataclass(frozen=True)
class TrainingData:
    """Everything the module reads of the data, built once by `InteractionDataModule.setup`.

    Typed and frozen so the module depends on these fields and nothing else of the DataModule;
    evaluation chunks reach the module through the dataloaders instead, because they are sharded
    per DDP process, which is only known once a trainer is attached.

    - `positives`: the training positives index, on the CPU until the module moves it to its device
    - `explicit_negatives`: [N, 2] (user, item) pairs the data marks as negatives (target 0)
    - `catalogue`: raw ids, what each user saw in each part, popularity, titles: saved in checkpoints; on
      several ranks of prepared data, where no rank sees every user, a `CatalogueReference` to the data
    - `ratings_missing`: why the interactions carry no ratings (each then counts as rating 1) and what
      to set, for losses that predict ratings; None when they carry them
    - `item_features`, `user_features`: categorical features by item / user index, for every item and
      user of the interactions (held-out ones too); None unless data.item_features / user_features name some
    """

    num_users: int
    num_items: int
    positives: TrainingPositives
    explicit_negatives: Tensor
    catalogue: Catalogue | CatalogueReference
    ratings_missing: str | None = None
    item_features: FeatureTable | None = None
    user_features: FeatureTable | None = None

    @property
    def mean_rating(self) -> float:
        """The mean rating of the training positives: what a rating model predicts before it learns anything."""
        return float(self.positives.csr.values.double().mean())
