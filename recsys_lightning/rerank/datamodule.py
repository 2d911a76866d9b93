"""The re-ranker's data: candidate lists built once (rerank/build.py), handed to Lightning as batches of
training lists and chunks of validation and test lists."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from recsys_lightning.data.batches import EpochBatchSampler
from recsys_lightning.models.base import Recommender
from recsys_lightning.rerank.features import CandidateFeatures
from recsys_lightning.rerank.lists import ListChunk, TrainingLists


@dataclass(frozen=True)
class ServingStages:
    """What serving the two stages takes, kept to measure its cost: the retriever, its candidate count and
    the features of all training rows."""

    retriever: Recommender
    candidates: int
    features: CandidateFeatures


class RerankDataModule(pl.LightningDataModule):
    """Training lists (the fold retriever's candidates, held-out training rows as targets) in shuffled
    batches of `batch_users` users (None: all in one, a full-batch step per epoch, as the bench trained),
    and the retriever's validation and test lists in their ranking chunks.

    `source` and `has_test` are read by train.py as from any DataModule; `serving` is what the two stages'
    cost is measured with."""

    def __init__(
        self,
        training: list[ListChunk],
        valid: list[ListChunk],
        test: list[ListChunk],
        batch_users: int | None,
        seed: int,
        source: str,
        serving: ServingStages,
    ) -> None:
        super().__init__()
        self.training = TrainingLists(training)
        self.valid, self.test = valid, test
        self.batch_size = min(batch_users or len(self.training), len(self.training))
        self.seed = seed
        self.source = source
        self.serving = serving

    @property
    def has_test(self) -> bool:
        return bool(self.test)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.training) / self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.training, sampler=EpochBatchSampler(len(self.training), self.batch_size, self.seed), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.valid, batch_size=None, collate_fn=_as_is)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test, batch_size=None, collate_fn=_as_is)


def _as_is(part: ListChunk) -> ListChunk:
    """A chunk is already a batch: nothing to collate or convert."""
    return part
