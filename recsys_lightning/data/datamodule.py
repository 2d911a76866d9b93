"""The LightningDataModule every data source shares: load -> interactions -> split -> batches."""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from recsys_lightning import progress
from recsys_lightning.data.batches import EpochBatchSampler, PositivePairs, RankingChunks, training_device
from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.data.chunked import ChunkedInteractions, frame_chunks
from recsys_lightning.data.features import FeatureColumns, index_features
from recsys_lightning.data.interactions import ITEM, PART, TARGET, USER, Interactions, latest_per_pair
from recsys_lightning.data.positives import TrainingPositives
from recsys_lightning.data.sized_defaults import AUTO, auto_batch_size
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.data.split import SPLIT_KINDS, Split, rerank_holdout, split_by_parts, split_interactions
from recsys_lightning.data.training_data import TrainingData
from recsys_lightning.errors import ConfigError, DataError, quote
from recsys_lightning.ranges import AnyOf, Choice, Range, Shares, integer
from recsys_lightning.seeds import stream_seed

log = logging.getLogger(__name__)

# eval.candidates: the items validation and test rank. all: the catalogue; cold: only the part's new items
# (held-out items with no training interaction: data.split=cold_items), as a catalogue owner asks.
EVAL_CANDIDATES = ("all", "cold")


@dataclass(frozen=True)
class LoadedInteractions:
    """What a source hands over: raw rows (user_id, item_id, rating, timestamp), item metadata, provenance,
    for a source whose rows have no real ratings (all 1), why and what to set (`ratings_missing`), and
    the configured item and user feature cells, still keyed by raw id."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    source: str
    ratings_missing: str | None = None
    item_features: FeatureColumns | None = None
    user_features: FeatureColumns | None = None


class InteractionDataModule(pl.LightningDataModule, ABC):
    """Subclasses only say where rows come from (`load`); splitting and batching are shared.

    Training batches are `TrainingBatch`es of (user, positive item, rating); negatives are drawn per
    batch, on the device, by the module's sampler. Evaluation batches are `RankingChunk`s: users
    with the items to hide and the held-out items (and ratings) of each.

    `setup` produces `training_data`, a frozen `TrainingData`: all that the module (and whoever
    sizes the model) reads of the data.
    """

    on_overlap = "drop"  # sources with pre-split parts: held-out pairs seen before are dropped or an error

    def __init__(
        self,
        split: Annotated[str, Choice(SPLIT_KINDS)] = "ratio",
        split_ratios: Annotated[Sequence[float], Shares()] = (0.8, 0.1, 0.1),
        min_rating: Annotated[float | None, Range()] = None,
        batch_size: Annotated[int | str, AnyOf((Choice((AUTO,)), integer(1)))] = 4096,  # auto: sized_defaults.auto_batch_size
        eval_chunk_size: Annotated[int, Range(1)] = 1024,
        eval_max_scores: Annotated[int, Range(1)] = 2**27,
        val_users: Annotated[int | None, Range(1)] = None,
        seed: int = 0,
        eval_candidates: Annotated[str, Choice(EVAL_CANDIDATES)] = "all",
        rerank_holdout: Annotated[float, Range(0, 1, open_high=True)] = 0.0,
    ) -> None:
        super().__init__()
        if eval_candidates == "cold" and split != "cold_items":  # a recorded config (evaluate) is not checked by train
            raise ConfigError(
                f"data.eval_candidates=cold ranks only items held out of training: it needs data.split=cold_items, not {split}"
            )
        self.split_kind = split
        self.split_ratios = tuple(split_ratios)
        self.min_rating = min_rating
        self.batch_size_setting = batch_size  # an integer, or "auto": chosen in `setup` from the training pairs
        self.batch_size: int | None = None if batch_size == AUTO else batch_size
        self.eval_chunk_size = eval_chunk_size
        self.eval_max_scores = eval_max_scores
        self.val_users = val_users
        self.seed = seed
        self.eval_candidates = eval_candidates
        self.rerank_holdout = rerank_holdout
        self.interactions: Interactions | None = None
        self.training_data: TrainingData | None = None
        self._chunks: dict[tuple[str, int, int, int | None], RankingChunks] = {}

    @abstractmethod
    def load(self) -> LoadedInteractions:
        """Read (or fetch) the raw interactions of this source."""

    def load_chunks(self, chunk_rows: int) -> ChunkedInteractions:
        """This source for `prepare`, `chunk_rows` rows at a time. Here every row is loaded once and handed out
        in chunks: sources read in bounded memory override it."""
        loaded = self.load()
        return ChunkedInteractions(
            chunks=frame_chunks(loaded.interactions, chunk_rows),
            source=loaded.source,
            ratings_missing=loaded.ratings_missing,
            index_ids=lambda distinct: distinct,
            items=lambda item_ids: loaded.items,
            given_parts=PART in loaded.interactions,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.interactions is not None:
            return
        with progress.building("data"):
            self._build()

    def _build(self) -> None:
        """`setup`'s work, each long step named for the progress lines (progress.py)."""
        loaded = self.load()
        self.source = loaded.source
        progress.stage("keeping the latest row of each (user, item)", len(loaded.interactions))
        frame = latest_per_pair(loaded.interactions)
        negative = (frame[TARGET] == 0).to_numpy() if TARGET in frame else np.zeros(len(frame), dtype=bool)
        in_train = (frame[PART] == 0).to_numpy() if PART in frame else True  # a held-out file's negatives would leak into training
        explicit_negatives = frame[negative & in_train]
        positives = frame[~negative]
        if positives.empty:
            raise DataError(f"{self.source}: every row has target 0, so there is no positive to learn from; check the target column")
        progress.stage("indexing users and items", len(positives))
        try:
            self.interactions = Interactions.from_frame(positives, self.min_rating)
        except DataError as error:
            raise DataError(f"{self.source}: {error}") from error
        progress.stage(f"splitting ({self.split_kind if self.interactions.parts is None else 'given parts'})", len(self.interactions))
        if self.interactions.parts is not None:
            try:
                self.split = split_by_parts(self.interactions, self.on_overlap)
            except DataError as error:
                raise DataError(f"{self.source}: {error}") from error
        else:
            self.split = split_interactions(self.interactions, self.split_kind, self.split_ratios, self.seed)
        if self.rerank_holdout:
            self.split = self._without_rerank_holdout(self.split)
        if len(self.split.valid) == 0:
            raise no_validation_error(self.source, self.split.left_out)
        rows = loaded.interactions  # before repeated rows are merged: the message counts what the test file held
        test_rows = int((rows[PART] == 2).sum()) if PART in rows else 0  # 2: test
        if test_rows and len(self.split.test) == 0:  # a given test file that tests nothing is a mistake, not "test 0"
            raise no_test_error(self.source, self.split.left_out, test_rows, int(np.count_nonzero(self.interactions.parts == 2)))
        if self.batch_size_setting == AUTO:
            self.batch_size = auto_batch_size(len(self.split.train))
            log.info("batch size %d (auto: %s training pairs)", self.batch_size, f"{len(self.split.train):,}")
        progress.stage("user x item CSRs of train, valid and test", len(self.interactions))
        self.train_positives = self._csr(self.split.train)
        self.valid_positives = self._csr(self.split.valid)
        self.test_positives = self._csr(self.split.test)
        check_negatives_exist(self.train_positives, self.interactions.user_ids)
        progress.stage("training positives and the catalogue", len(self.split.train))
        item_info = self._index_item_info(loaded.items)
        parts = (self.train_positives, self.valid_positives, self.test_positives)
        self.training_data = TrainingData(
            num_users=self.num_users,
            num_items=self.num_items,
            positives=TrainingPositives.from_csr(self.train_positives),
            explicit_negatives=self._index_pairs(explicit_negatives),
            catalogue=Catalogue.from_parts(pd.Index(self.interactions.user_ids), pd.Index(self.interactions.item_ids), parts, item_info),
            ratings_missing=loaded.ratings_missing,
            item_features=index_features(loaded.item_features, self.interactions.item_ids, "item") if loaded.item_features else None,
            user_features=index_features(loaded.user_features, self.interactions.user_ids, "user") if loaded.user_features else None,
        )
        self._log_summary()

    def _without_rerank_holdout(self, split: Split) -> Split:
        """`split` with `rerank_holdout` of each user's training rows left out of training (split.rerank_holdout
        draws them); valid and test stay as they are. The run is a re-ranker's fold retriever."""
        held = rerank_holdout(self.interactions.users[split.train], self.rerank_holdout, self.seed)
        log.info(
            "data.rerank_holdout=%g: %s of %s training rows held out of training (a re-ranker's fold retriever)",
            self.rerank_holdout,
            f"{int(held.sum()):,}",
            f"{len(held):,}",
        )
        return replace(split, train=split.train[~held])

    @property
    def has_test(self) -> bool:
        return len(self.split.test) > 0

    @property
    def steps_per_epoch(self) -> int:
        """Training steps of one epoch in one process."""
        return math.ceil(len(self.split.train) / self.batch_size)

    @property
    def num_users(self) -> int:
        return self.interactions.num_users

    @property
    def num_items(self) -> int:
        return self.interactions.num_items

    def train_dataloader(self) -> DataLoader:
        """Training pairs live on the training device, so each batch is one indexing op there.

        `batch_size` is per process: under DDP a step sees batch_size x world_size pairs.
        """
        rows = self.split.train
        columns = (self.interactions.users, self.interactions.items, self.interactions.ratings)
        pairs = PositivePairs(*(torch.from_numpy(column[rows]) for column in columns)).to(training_device(self.trainer))
        batches = EpochBatchSampler(len(pairs), self.batch_size, self.seed, *self._shard())
        return DataLoader(pairs, sampler=batches, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.ranking_chunks("valid", *self._shard()), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.ranking_chunks("test", *self._shard()), batch_size=None)

    def _shard(self) -> tuple[int, int]:
        """(rank, number of processes): each DDP process trains and evaluates its own disjoint share."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def validation_users(self) -> torch.Tensor:
        """The users validation ranks, ascending: every user with validation items, or, with `val_users`
        = N, a sample of N of them drawn from the run's seed alone, so every epoch (and a resumed run)
        validates the same users. Test always ranks every user."""
        users = torch.nonzero(self.valid_positives.counts() > 0).flatten()
        if self.val_users is None or self.val_users >= len(users):
            return users
        generator = torch.Generator().manual_seed(stream_seed(self.seed, "validation_users"))
        sample = torch.randperm(len(users), generator=generator)[: self.val_users]
        log.info("validation ranks a fixed sample of %d of the %d users with validation items (data.val_users)", self.val_users, len(users))
        return users[sample.sort().values]

    def ranking_chunks(self, part: str, rank: int = 0, num_replicas: int = 1) -> RankingChunks:
        """Built once per part: fit, validate and test reuse them (seconds at 20M interactions).

        Chunks hold at most `eval_max_scores` scores (chunk x num_items), so a million-item catalogue
        gets smaller chunks instead of gigabytes of scores.
        """
        key = (part, rank, num_replicas, self.val_users if part == "valid" else None)
        if key not in self._chunks:
            chunk_size = ranking_chunk_size(self.eval_chunk_size, self.eval_max_scores, self.num_items)
            heldout, seen, users = (
                (self.valid_positives, self.train_positives, self.validation_users())
                if part == "valid"
                else (self.test_positives, self.train_positives.union(self.valid_positives), None)
            )
            candidates = self.candidate_items(part)
            with progress.building(f"{part} ranking chunks"):
                self._chunks[key] = RankingChunks(heldout, seen, chunk_size, rank, num_replicas, users, candidates=candidates)
        return self._chunks[key]

    def candidate_items(self, part: str) -> torch.Tensor | None:
        """The items `part` (valid or test) ranks, as a bool [num_items] mask: None (every item) with
        eval_candidates=all; with cold, the items `part` holds that have no training interaction."""
        if self.eval_candidates == "all":
            return None
        heldout = self.valid_positives if part == "valid" else self.test_positives
        new_items = (heldout.counts_per_item() > 0) & (self.train_positives.counts_per_item() == 0)
        count = int(new_items.sum())
        if not count:
            raise DataError(
                f"{self.source}: eval.candidates=cold, but the {part} part holds no item without training interactions; "
                "use data.split=cold_items, or eval.candidates=all"
            )
        log.info("eval.candidates=cold: %s ranks only its %d new items (of %d)", part, count, self.num_items)
        return new_items

    def _csr(self, rows) -> UserItemCSR:
        return UserItemCSR.from_pairs(
            torch.from_numpy(self.interactions.users[rows]),
            torch.from_numpy(self.interactions.items[rows]),
            self.num_users,
            self.num_items,
            values=torch.from_numpy(self.interactions.ratings[rows]),
        )

    def _index_pairs(self, frame: pd.DataFrame) -> torch.Tensor:
        """[N, 2] (user, item) indices of rows whose ids the interactions know; others are dropped.
        Ids match exactly, never coerced: with text ids `7` is not `007`, with integer ids `7` is not 7.0."""
        users = _positions(self.interactions.user_ids, frame[USER])
        items = _positions(self.interactions.item_ids, frame[ITEM])
        known = (users >= 0) & (items >= 0)
        return torch.from_numpy(np.stack([users[known], items[known]], 1).astype(np.int64))

    def _index_item_info(self, items: pd.DataFrame) -> pd.DataFrame:
        """Item metadata (titles, genres) in item-index order, empty where a source has none."""
        index = pd.Index(self.interactions.item_ids, name=ITEM)
        return items.drop_duplicates(ITEM).set_index(ITEM).reindex(index).reset_index()

    def _log_summary(self) -> None:
        split: Split = self.split
        sizes = f"train {len(split.train)} / valid {len(split.valid)} / test {len(split.test)}"
        if self.interactions.parts is None:
            log.info(
                "%s: %d users, %d items, %d interactions -> %s (%s split)",
                self.source,
                self.num_users,
                self.num_items,
                len(self.interactions),
                sizes,
                self.split_kind,
            )
            return
        given = np.bincount(self.interactions.parts, minlength=3)
        log.info(
            "%s: %d users, %d items; pre-split files give train %d / valid %d / test %d interactions%s%s -> %s",
            self.source,
            self.num_users,
            self.num_items,
            *given,
            left_out_note(self.split.left_out, "valid"),
            left_out_note(self.split.left_out, "test"),
            sizes,
        )


def no_validation_error(source: str, left_out: Mapping[str, Mapping[str, int]]) -> DataError:
    """The error of a split without a validation row; `left_out` as `Split.left_out`."""
    return DataError(
        f"{source}: no validation interaction is left{left_out_note(left_out, 'valid')}; "
        "validation needs new (user, item) pairs of users and items seen in train"
    )


def no_test_error(source: str, left_out: Mapping[str, Mapping[str, int]], test_rows: int, test_given: int) -> DataError:
    """The error of a given test file that tests nothing: of its `test_rows` rows, `test_given` were positives
    left after repeated rows and min_rating, and `left_out["test"]` says why those were left out."""
    return DataError(
        f"{source}: no test interaction is left: {_why_no_test(left_out, test_rows, test_given)}; test needs new "
        "(user, item) pairs of users and items seen in train: fix the test file or leave it out"
    )


def _why_no_test(left_out: Mapping[str, Mapping[str, int]], test_rows: int, test_given: int) -> str:
    """'all 720 test pairs also occur in train', or each reason counted when there are several."""
    phrases = {"unseen": "have a user or item absent from train", "in train": "also occur in train", "in valid": "also occur in valid"}
    counts = {reason: count for reason, count in left_out["test"].items() if count}
    dropped = test_rows - test_given
    if not dropped and len(counts) == 1:
        ((reason, count),) = counts.items()
        return f"all {count} test pairs {phrases[reason]}"
    reasons = [f"{dropped} dropped before splitting (target 0, below data.min_rating, or repeated)"] if dropped else []
    return f"of {test_rows} test rows, " + ", ".join(reasons + [f"{count} {phrases[reason]}" for reason, count in counts.items()])


def left_out_note(left_out: Mapping[str, Mapping[str, int]], part: str) -> str:
    """'; left out of valid: 3 with a user or item absent from train, ...' or '' when nothing was."""
    reasons = {"unseen": "with a user or item absent from train", "in train": "already in train", "in valid": "already in valid"}
    counts = left_out.get(part, {})
    listed = [f"{count} {reasons[reason]}" for reason, count in counts.items() if count]
    return f"; left out of {part}: {', '.join(listed)}" if listed else ""


def check_negatives_exist(train_positives: UserItemCSR, user_ids: np.ndarray) -> None:
    """A user with every item in train has no negative to draw: DataError naming the first (`user_ids` by row)."""
    full_users = torch.nonzero(train_positives.counts() >= train_positives.num_items).flatten()
    if len(full_users):
        raw = user_ids[full_users[0].item()]
        raise DataError(f"user {quote(raw)} interacted with every item, so no negative exists: remove that user")


def ranking_chunk_size(eval_chunk_size: int, eval_max_scores: int, num_items: int) -> int:
    """Users per evaluation chunk: `eval_chunk_size`, fewer where chunk x num_items would pass `eval_max_scores`."""
    return max(1, min(eval_chunk_size, eval_max_scores // num_items))


def _positions(ids: np.ndarray, raw: pd.Series) -> np.ndarray:
    """Index of each raw id in `ids`, -1 where absent; categorical columns are looked up once per category."""
    index = pd.Index(ids)
    if isinstance(raw.dtype, pd.CategoricalDtype):
        found = np.append(index.get_indexer(raw.cat.categories), -1)  # code -1 (missing) -> -1
        return found[raw.cat.codes.to_numpy()]
    return index.get_indexer(raw)
