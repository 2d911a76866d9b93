"""Batches built by tensor indexing: shuffled training pairs and fixed full-ranking chunks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.seeds import stream_seed


class EpochBatchSampler(Sampler[Tensor]):
    """Yields index batches of a permutation that depends only on (seed, epoch).

    Lightning calls `set_epoch` before each epoch, so a resumed run replays the same order. Under DDP
    each of `num_replicas` processes takes every num_replicas-th index of the same permutation: the
    shards are disjoint and equally long (the last num_samples % num_replicas indices of each epoch's
    permutation are left out, never duplicated), so every process runs the same number of steps.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, num_replicas: int = 1) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.num_replicas = num_replicas
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def shard_size(self) -> int:
        return self.num_samples // self.num_replicas

    def __iter__(self):
        generator = torch.Generator().manual_seed(stream_seed(self.seed, "batch_order", epoch=self.epoch))
        permutation = torch.randperm(self.num_samples, generator=generator)
        shard = permutation[self.rank : self.shard_size * self.num_replicas : self.num_replicas]
        yield from shard.split(self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.shard_size / self.batch_size)


class ShareBatchSampler(Sampler[Tensor]):
    """One rank's epoch over its own training pairs (prepared data), in exactly `steps` batches.

    Every rank runs the same `steps` whatever its share, so DDP's gradient averaging never waits on a
    rank that has finished: batches of `batch_size` when that gives `steps` of them, else `steps`
    near-equal batches. Each local pair is seen once per epoch. The order depends on (seed, rank, epoch)
    only, and at rank 0 it is `EpochBatchSampler`'s: one rank reproduces single-process training.
    """

    def __init__(self, num_samples: int, batch_size: int, steps: int, seed: int, rank: int = 0) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.steps = steps
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(stream_seed(self.seed, "batch_order", self.rank, self.epoch))
        permutation = torch.randperm(self.num_samples, generator=generator)
        if math.ceil(self.num_samples / self.batch_size) == self.steps:
            yield from permutation.split(self.batch_size)
        else:
            yield from permutation.tensor_split(self.steps)

    def __len__(self) -> int:
        return self.steps


@dataclass
class TrainingBatch:
    """Training (user, positive item, rating) triples; negatives are drawn by the module's sampler.

    Not frozen: Lightning's device transfer rebuilds dataclass batches field by field.
    """

    users: Tensor
    items: Tensor
    ratings: Tensor

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class RankingChunk:
    """Evaluation users with, as (row, item) coordinates, the items to hide from their ranking and
    the held-out items (and ratings) to find; row is the position in `users`. `candidates`, a bool
    [num_items] mask shared by every chunk of a part, restricts the ranking to those items
    (eval.candidates=cold: the part's new items); None ranks the whole catalogue."""

    users: Tensor
    exclude_rows: Tensor
    exclude_items: Tensor
    heldout_rows: Tensor
    heldout_items: Tensor
    heldout_ratings: Tensor
    candidates: Tensor | None = None


class PositivePairs(Dataset):
    """Training (user, positive item, rating) triples; indexed with a whole batch of indices at once."""

    def __init__(self, users: Tensor, items: Tensor, ratings: Tensor) -> None:
        self.users = users
        self.items = items
        self.ratings = ratings

    def __len__(self) -> int:
        return len(self.users)

    def to(self, device: torch.device | str) -> PositivePairs:
        return PositivePairs(self.users.to(device), self.items.to(device), self.ratings.to(device))

    def __getitem__(self, index: Tensor) -> TrainingBatch:
        index = index.to(self.users.device)
        return TrainingBatch(self.users[index], self.items[index], self.ratings[index])


class RankingChunks(Dataset):
    """Evaluation users in chunks, each with the items to hide from its ranking and the held-out items.

    `users` are the users to rank (default: every user with held-out items); each DDP process takes
    its own shard of them. `candidates` (a bool [num_items] mask, or None for all) is the items every
    chunk ranks. Built once: the chunks are the same every epoch, so only the scoring is repeated.
    With prepared data the CSRs hold one rank's users, row u being global user `first_user + u`:
    `users` are rows, and the chunks carry global users, as the model's tables are global.
    """

    def __init__(
        self,
        heldout: UserItemCSR,
        exclude: UserItemCSR,
        chunk_size: int,
        rank: int = 0,
        num_replicas: int = 1,
        users: Tensor | None = None,
        first_user: int = 0,
        candidates: Tensor | None = None,
    ) -> None:
        if users is None:
            users = torch.nonzero(heldout.counts() > 0).flatten()
        users = users[rank::num_replicas]  # one shard per DDP process
        self.chunks = []
        for chunk_users in users.split(chunk_size):
            chunk_users = chunk_users.clone()  # its own storage, not a view pinning all users
            exclude_rows, exclude_items = exclude.coordinates(chunk_users)
            heldout_rows, heldout_items = heldout.coordinates(chunk_users)
            ratings = heldout.values_of(chunk_users)
            global_users = chunk_users + first_user if first_user else chunk_users
            chunk = RankingChunk(global_users, exclude_rows, exclude_items, heldout_rows, heldout_items, ratings, candidates)
            self.chunks.append(chunk)
        self.num_users = len(users)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> RankingChunk:
        return self.chunks[index]


def training_device(trainer) -> torch.device:
    """Where training pairs live: the trainer's root device (CPU without a trainer), so a batch is one indexing op there."""
    return trainer.strategy.root_device if trainer is not None else torch.device("cpu")
