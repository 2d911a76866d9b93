"""`data=prepared`: each DDP rank trains and evaluates on its own share of users of a prepared folder.

The rank and world are read from the launcher's environment (torchrun, SLURM) when the data is set up,
before a Trainer exists (train.py sizes the model from the data first), and checked against the
Trainer's once Lightning sets the data up again. Each rank reads only its share: its users' rows, as
the single-process pipeline orders them, and the global item-sized facts. Nothing of length users or
interactions beyond the share is built.
"""

from __future__ import annotations

import logging
import math
from typing import Annotated

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from torch.utils.data import DataLoader

from recsys_lightning.data.batches import PositivePairs, RankingChunks, ShareBatchSampler, training_device
from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.data.catalogue_reference import CatalogueReference
from recsys_lightning.data.datamodule import check_negatives_exist, ranking_chunk_size
from recsys_lightning.data.positives import TrainingPositives
from recsys_lightning.data.sized_defaults import AUTO, auto_batch_size
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.data.training_data import TrainingData
from recsys_lightning.errors import ConfigError, DataError
from recsys_lightning.prepared.folder import PreparedFolder
from recsys_lightning.prepared.share import NEGATIVE, TEST, TRAIN, VALID, ShareSource, UserShare
from recsys_lightning.ranges import TEXT, AnyOf, Choice, Range, integer
from recsys_lightning.seeds import stream_seed

log = logging.getLogger(__name__)

PREPARED_TARGET = "recsys_lightning.prepared.datamodule.PreparedDataModule"  # conf/data/prepared.yaml
LAUNCH_HINT = "launch with torchrun --nproc-per-node {world} ... or srun (README, Beyond one machine)"


def launched_rank() -> tuple[int, int]:
    """(rank, world) as the launcher set them, as Lightning will read them; (0, 1) for a plain process."""
    for environment in (TorchElasticEnvironment, SLURMEnvironment):
        if environment.detect():
            launched = environment()
            return launched.global_rank(), launched.world_size()
    return 0, 1


def per_rank_batch(global_batch: int, world: int) -> int:
    """Each rank's share of the global batch, at least one pair."""
    return max(1, global_batch // world)


def steps_per_epoch(train_rows_per_rank: list[int], batch_size: int) -> int:
    """Steps every rank runs: those the largest share needs at the per-rank batch."""
    return math.ceil(max(train_rows_per_rank) / batch_size)


def uneven_share_remedy(train_rows_per_rank: list[int]) -> str:
    """What lets every rank run the largest share's step count: a per-rank batch of at least largest / smallest
    (ceil(largest / b) <= smallest), that is the global batch times W, where the smallest share has pairs at all."""
    fewest, world = min(train_rows_per_rank), len(train_rows_per_rank)
    if fewest == 0:
        return "run fewer processes, or prepare the data again with fewer parts"
    return f"set data.batch_size >= {world * -(-max(train_rows_per_rank) // fewest)}, or run fewer processes"


def sampled_validation_users(users: np.ndarray, val_users: int, valid_users: int, seed: int) -> np.ndarray:
    """Which of `users` (global indices, with validation items) validation ranks with `data.val_users`:
    those whose hash of (seed, user) falls below val_users / valid_users, about `val_users` over all ranks,
    and at least the lowest of `users`, so that no rank has nothing to validate (the others would wait
    on its share of the summed metrics).

    Decided per user, so every rank chooses its own without communicating, and the choice is the same on
    every call and on resume. The hash is splitmix64's finaliser (Steele et al. 2014), vectorised.
    """
    with np.errstate(over="ignore"):
        state = users.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(stream_seed(seed, "validation_users"))
        state = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        state = (state ^ (state >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        state ^= state >> np.uint64(31)
    uniform = (state >> np.uint64(11)).astype(np.float64) * 2.0**-53
    kept = uniform < val_users / max(1, valid_users)
    if len(users) and not kept.any():
        kept[np.argmin(uniform)] = True
    return kept


class PreparedDataModule(pl.LightningDataModule):
    """Rank r of W trains on its users' training pairs and ranks its users at validation and test.

    `batch_size` is the global batch: each rank takes `batch_size // W` pairs a step and every rank runs
    the steps the largest share needs (`ShareBatchSampler`), so results do not depend on W. Model
    tables stay global (`num_users` of all ranks); local structures are indexed from `first_user`.
    """

    def __init__(
        self,
        path: Annotated[str, TEXT],
        batch_size: Annotated[int | str, AnyOf((Choice((AUTO,)), integer(1)))] = AUTO,
        eval_chunk_size: Annotated[int, Range(1)] = 256,
        eval_max_scores: Annotated[int, Range(1)] = 2**27,
        val_users: Annotated[int | None, Range(1)] = None,
        seed: Annotated[int, integer(0, 2**32 - 1)] = 0,
    ) -> None:
        super().__init__()
        self.path = path
        self.batch_size_setting = batch_size
        self.batch_size: int | None = None if batch_size == AUTO else batch_size  # global, as data.batch_size says
        self.eval_chunk_size = eval_chunk_size
        self.eval_max_scores = eval_max_scores
        self.val_users = val_users
        self.seed = seed
        self.prepared: ShareSource | None = None
        self.training_data: TrainingData | None = None
        self._chunks: dict[str, RankingChunks] = {}

    @classmethod
    def from_source(cls, prepared: ShareSource, **settings) -> PreparedDataModule:
        """Over a ShareSource already open (tests: one held in memory)."""
        datamodule = cls(path="", **settings)
        datamodule.prepared = prepared
        return datamodule

    def setup(self, stage: str | None = None) -> None:
        if self.training_data is None:
            self.read_share(*launched_rank())
        if self.trainer is not None and (self.trainer.global_rank, self.trainer.world_size) != (self.rank, self.world):
            world = self.trainer.world_size
            raise ConfigError(
                f"data=prepared reads one share per process, but this process was started as rank {self.rank} of "
                f"{self.world} and trains as rank {self.trainer.global_rank} of {world}: {LAUNCH_HINT.format(world=world)}"
            )

    def read_share(self, rank: int, world: int) -> None:
        """Read and index rank `rank` of `world`'s share: what `setup` does with the launcher's rank and world."""
        if self.prepared is None:
            self.prepared = PreparedFolder.open(self.path)
        prepared = self.prepared
        self.rank, self.world, self.source = rank, world, prepared.source
        train_rows = prepared.train_rows_per_rank(world)
        total = sum(train_rows)
        if self.batch_size_setting == AUTO:
            self.batch_size = auto_batch_size(total)
            log.info("batch size %d (auto: %s training pairs over all ranks)", self.batch_size, f"{total:,}")
        self.rank_batch_size = per_rank_batch(self.batch_size, world)
        self.steps = steps_per_epoch(train_rows, self.rank_batch_size)
        fewest = int(np.argmin(train_rows))
        if train_rows[fewest] < self.steps:
            raise DataError(
                f"{self.source}: rank {fewest} of {world} holds {train_rows[fewest]} training pairs, fewer than the {self.steps} "
                f"steps every rank runs per epoch at data.batch_size={self.batch_size}; {uneven_share_remedy(train_rows)}"
            )
        share = prepared.read_share(rank, world)
        self.first_user, self.share_users = share.first_user, share.num_users
        self._index(share)
        log.info(
            "rank %d of %d: users %d..%d, %s rows (%s training pairs), %d steps per epoch, global batch %d, per-rank batch %d",
            rank,
            world,
            share.first_user,
            share.first_user + share.num_users - 1,
            f"{len(share):,}",
            f"{train_rows[rank]:,}",
            self.steps,
            self.batch_size,
            self.rank_batch_size,
        )

    def _index(self, share: UserShare) -> None:
        """The share's parts as CSRs over its own users (row u = global user first_user + u), and what the module reads."""
        prepared = self.prepared
        local_users = torch.from_numpy(share.users - share.first_user)
        items, ratings = torch.from_numpy(share.items), torch.from_numpy(share.ratings)
        masks = {part: torch.from_numpy(share.parts == code) for part, code in (("train", TRAIN), ("valid", VALID), ("test", TEST))}
        csrs = {
            part: UserItemCSR.from_pairs(local_users[mask], items[mask], share.num_users, prepared.num_items, values=ratings[mask])
            for part, mask in masks.items()
        }
        self.train_positives, self.valid_positives, self.test_positives = csrs["train"], csrs["valid"], csrs["test"]
        self.train_pairs = PositivePairs(
            torch.from_numpy(share.users[share.parts == TRAIN]), items[masks["train"]], ratings[masks["train"]]
        )
        self._check_evaluated(share)
        check_negatives_exist(self.train_positives, share.user_ids)
        negative = share.parts == NEGATIVE
        popularity = torch.from_numpy(prepared.item_train_counts)
        self.training_data = TrainingData(
            num_users=prepared.num_users,
            num_items=prepared.num_items,
            positives=TrainingPositives.from_csr(self.train_positives, share.first_user, popularity),
            explicit_negatives=torch.from_numpy(np.stack([share.users[negative], share.items[negative]], 1).astype(np.int64)),
            catalogue=self._catalogue(share),
            ratings_missing=prepared.ratings_missing,
        )

    def _check_evaluated(self, share: UserShare) -> None:
        """Every rank validates (and on several ranks tests) its own users, and the summed metrics wait for every
        rank: a share with nothing to rank would leave the others waiting, so it is refused here."""
        parts = [("validation", self.valid_positives)] + ([("test", self.test_positives)] if self.world > 1 else [])
        for name, positives in parts:
            if positives.indptr[-1].item() == 0:
                last = share.first_user + share.num_users - 1
                raise DataError(
                    f"{self.source}: rank {self.rank} of {self.world} (users {share.first_user}..{last}) holds no {name} "
                    "interaction, and every rank ranks its own users; run fewer processes, or prepare the data with fewer parts"
                )

    def _catalogue(self, share: UserShare) -> Catalogue | CatalogueReference:
        """At one rank the full catalogue, as the single-process datamodule builds it (evaluate, recommend and
        resume then work unchanged); on several ranks the reference that names the prepared data."""
        prepared = self.prepared
        if self.world > 1:
            return CatalogueReference.from_source(prepared)
        item_info = pd.DataFrame({"title": prepared.titles if prepared.titles is not None else [None] * prepared.num_items})
        parts = (self.train_positives, self.valid_positives, self.test_positives)
        return Catalogue.from_parts(pd.Index(share.user_ids), pd.Index(prepared.item_ids), parts, item_info)

    @property
    def has_test(self) -> bool:
        return self.test_positives.indptr[-1].item() > 0

    @property
    def steps_per_epoch(self) -> int:
        """Training steps of one epoch, the same on every rank."""
        return self.steps

    @property
    def num_users(self) -> int:
        return self.prepared.num_users

    @property
    def num_items(self) -> int:
        return self.prepared.num_items

    def train_dataloader(self) -> DataLoader:
        """This rank's training pairs on the training device, in `steps_per_epoch` batches of about `batch_size // W`."""
        pairs = self.train_pairs.to(training_device(self.trainer))
        batches = ShareBatchSampler(len(pairs), self.rank_batch_size, self.steps, self.seed, self.rank)
        return DataLoader(pairs, sampler=batches, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.ranking_chunks("valid"), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.ranking_chunks("test"), batch_size=None)

    def validation_users(self) -> torch.Tensor:
        """This share's users that validation ranks (rows, ascending): every one with validation items, or
        with `val_users` = N those `sampled_validation_users` keeps, about N over all ranks."""
        users = torch.nonzero(self.valid_positives.counts() > 0).flatten()
        if self.val_users is None or self.val_users >= self.prepared.valid_users:
            return users
        kept = sampled_validation_users(users.numpy() + self.first_user, self.val_users, self.prepared.valid_users, self.seed)
        log.info(
            "validation ranks %d of this rank's %d users with validation items: about %d of %d over all ranks (data.val_users)",
            int(kept.sum()),
            len(users),
            self.val_users,
            self.prepared.valid_users,
        )
        return users[torch.from_numpy(kept)]

    def ranking_chunks(self, part: str) -> RankingChunks:
        """This share's users of `part` in chunks carrying global users, built once per part.

        `eval_chunk_size` and `eval_max_scores` are global, like `batch_size`: each of W ranks scores a
        W-th of one process's chunk at a time (rounded up), so the scores a rank holds fall as ranks are
        added, and the ranks together step through the users in as many chunks as one process would.
        """
        if part not in self._chunks:
            chunk_size = -(-ranking_chunk_size(self.eval_chunk_size, self.eval_max_scores, self.num_items) // self.world)
            heldout, seen, users = (
                (self.valid_positives, self.train_positives, self.validation_users())
                if part == "valid"
                else (self.test_positives, self.train_positives.union(self.valid_positives), None)
            )
            self._chunks[part] = RankingChunks(heldout, seen, chunk_size, users=users, first_user=self.first_user)
        return self._chunks[part]
