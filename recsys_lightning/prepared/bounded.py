"""`prepare` in memory bounded by a chunk size: a source read in chunks, cut into blocks of whole users on disk,
and split one block at a time, with the single-process rules and seed.

Held at once: one chunk of rows, the id maps and per-user and per-item counts, and one block (a block holds
whole users, about `chunk_rows` rows, more only where one user has more). The steps:

1. read the source: every distinct raw user and item id, and each user's rows;
2. read it again: each row, its ids as places in the sorted id lists, appended to its user block's file;
3. per block: the latest row of each (user, item) (by timestamp, then source order, as `latest_per_pair`;
   of each (user, item, file) for pre-split files), the positives that `min_rating` keeps, written sorted
   by (timestamp, source row): a run; the explicit negatives of train set aside;
4. `merge_ranks` of the runs: each positive's place in the single-process interactions (its `row`) and that
   place's draw of the split stream; the explicit negatives get their places the same way;
5. per block: final indices (setup's sorted-id factorisation), the split (`split_users` or `item_parts`;
   for pre-split files the files' parts, less the held-out rows `given_part_codes` leaves out, knowing from
   step 3 which users and items train has), the rows sorted as `write_prepared` sorts them, written to the
   block's file;
6. the parts, cut by `user_blocks` from the users' final row counts, each written from the blocks it spans.

The folder holds the rows `write_prepared` writes after `setup`; a part file's row groups follow the blocks.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recsys_lightning.data.catalogue import item_titles
from recsys_lightning.data.chunked import ChunkedInteractions, IdTally, id_places
from recsys_lightning.data.datamodule import InteractionDataModule, check_negatives_exist, no_test_error, no_validation_error
from recsys_lightning.data.interactions import ITEM, PART, RATING, TARGET, TIMESTAMP, USER
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.data.split import given_part_codes, item_parts, report_left_out, split_users
from recsys_lightning.errors import DataError
from recsys_lightning.prepared.layout import PART_SCHEMA, part_name
from recsys_lightning.prepared.merge import DRAWS, RANKS, merge_ranks
from recsys_lightning.prepared.share import NEGATIVE, TEST, TRAIN, VALID, user_blocks
from recsys_lightning.prepared.write import build_folder, check_output_free, check_parts, part_entry, write_items, write_manifest
from recsys_lightning.seeds import stream_seed

log = logging.getLogger(__name__)

# A source row: user and item as places in the sorted distinct raw ids, and its place in the source.
SOURCE_ROW = np.dtype(
    [
        ("user", np.int64),
        ("item", np.int64),
        ("rating", np.float32),
        ("timestamp", np.float64),
        ("source_row", np.int64),
        ("target", np.int8),
        ("part", np.int8),  # pre-split files: the part its file gives it (TRAIN, VALID, TEST); else TRAIN
    ]
)
# A row of a part, as PART_SCHEMA has it.
PART_ROW = np.dtype([(field.name, field.type.to_pandas_dtype()) for field in PART_SCHEMA])
WORK = ".work"  # the working files' folder inside the folder being built


def write_prepared_bounded(
    datamodule: InteractionDataModule, chunked: ChunkedInteractions, output: Path, parts: int, chunk_rows: int
) -> dict[str, Any]:
    """Prepare `chunked` (from `datamodule.load_chunks`) into `parts` user blocks at `output`, `chunk_rows` rows
    at a time; `datamodule` gives the split settings and seed. Returns the manifest."""
    check_output_free(output)
    return build_folder(output, lambda folder: _Preparation(datamodule, chunked, folder, parts, chunk_rows).run())


class _Preparation:
    """The steps of one bounded prepare, in `run` order; working files live in `folder`/WORK."""

    def __init__(self, datamodule: InteractionDataModule, chunked: ChunkedInteractions, folder: Path, parts: int, chunk_rows: int) -> None:
        self.datamodule, self.chunked, self.folder, self.parts, self.chunk_rows = datamodule, chunked, folder, parts, chunk_rows
        self.work = folder / WORK
        self.work.mkdir()

    def run(self) -> dict[str, Any]:
        self._read_ids()
        self._write_blocks()
        self._keep_latest()
        self._rank()
        self._split_blocks()
        manifest = self._write_parts()
        shutil.rmtree(self.work)
        return manifest

    def _file(self, kind: str, block: int) -> Path:
        return self.work / f"{kind}-{block:06d}"

    def _read_ids(self) -> None:
        """Step 1: the sorted distinct raw ids (as the chunks give them, and as setup keeps them) and rows per user."""
        users, items = IdTally(), IdTally()
        self.test_rows = 0  # rows of a given test file, repeated and negative ones too (its error counts them)
        for chunk in self.chunked.chunks():
            users.add(chunk[USER])
            items.add(chunk[ITEM])
            if PART in chunk:
                self.test_rows += int(np.count_nonzero(chunk[PART].to_numpy() == TEST))
        distinct_users, user_rows = users.result()
        self.user_keys, self.user_ids, order = _sorted_ids(distinct_users, self.chunked.index_ids)
        self.item_keys, self.item_ids, _ = _sorted_ids(items.result()[0], self.chunked.index_ids)
        rows = user_rows[order]
        # Blocks of whole users: a user starting within the k-th `chunk_rows` rows is in block k (renumbered without gaps).
        _, self.block_of_user = np.unique((np.cumsum(rows) - rows) // self.chunk_rows, return_inverse=True)
        self.blocks = int(self.block_of_user.max()) + 1
        log.info("%s: %s rows, %d users in %d blocks", self.chunked.source, f"{rows.sum():,}", len(rows), self.blocks)

    def _write_blocks(self) -> None:
        """Step 2: every row appended, in source order, to its user block's file."""
        source_row = 0
        for chunk in self.chunked.chunks():
            rows = np.empty(len(chunk), SOURCE_ROW)
            rows["user"] = id_places(self.user_keys, chunk[USER])
            rows["item"] = id_places(self.item_keys, chunk[ITEM])
            rows["rating"] = chunk[RATING].to_numpy(np.float32)
            rows["timestamp"] = chunk[TIMESTAMP].to_numpy(np.float64)
            rows["source_row"] = source_row + np.arange(len(chunk))
            rows["target"] = chunk[TARGET].to_numpy(np.int8) if TARGET in chunk else 1
            rows["part"] = chunk[PART].to_numpy(np.int8) if PART in chunk else TRAIN
            source_row += len(chunk)
            if (rows["user"] < 0).any() or (rows["item"] < 0).any():
                raise DataError(f"{self.chunked.source}: changed while prepare read it (an id its first reading lacked); run prepare again")
            blocks = self.block_of_user[rows["user"]]
            order = np.argsort(blocks, kind="stable")
            rows, ends = rows[order], np.searchsorted(blocks[order], np.arange(self.blocks), "right")
            for block in np.unique(blocks):
                with open(self._file("rows", block), "ab") as handle:
                    rows[(ends[block - 1] if block else 0) : ends[block]].tofile(handle)

    def _keep_latest(self) -> None:
        """Step 3: per block, the latest row of each pair (of each pair per part, for pre-split files); the kept
        positives sorted by key as a run, the explicit negatives of train set aside; which users and items have
        a kept positive, and which a kept positive of train."""
        min_rating = self.datamodule.min_rating
        self.user_kept = np.zeros(len(self.user_ids), bool)
        self.item_kept = np.zeros(len(self.item_ids), bool)
        self.user_trained = np.zeros(len(self.user_ids), bool)
        self.item_trained = np.zeros(len(self.item_ids), bool)
        self.test_given = 0  # kept positives of a given test file
        dropped = repeated = positives = 0
        for block in range(self.blocks):
            rows = np.fromfile(self._file("rows", block), SOURCE_ROW)
            self._file("rows", block).unlink()
            rows = rows[np.lexsort((rows["source_row"], rows["timestamp"], rows["part"], rows["item"], rows["user"]))]
            same_pair = (
                (rows["user"][1:] == rows["user"][:-1]) & (rows["item"][1:] == rows["item"][:-1]) & (rows["part"][1:] == rows["part"][:-1])
            )
            last = np.append(~same_pair, True)
            dropped += int(same_pair.sum())
            repeated += int((last[1:] & same_pair).sum())
            rows = rows[last]
            negative = rows["target"] == 0
            kept = rows[~negative]
            positives += len(kept)
            if min_rating is not None:
                kept = kept[kept["rating"] >= min_rating]
            self.user_kept[kept["user"]] = True
            self.item_kept[kept["item"]] = True
            trained = kept[kept["part"] == TRAIN]
            self.user_trained[trained["user"]] = True
            self.item_trained[trained["item"]] = True
            self.test_given += int(np.count_nonzero(kept["part"] == TEST))
            _by_key(kept).tofile(self._file("positives", block))
            rows[negative & (rows["part"] == TRAIN)].tofile(self._file("negatives", block))  # a held-out file's would leak into training
        if dropped:
            log.warning(
                "dropped %d repeated (user, item) rows of %d pairs, keeping the latest of each (by timestamp, then file order)",
                dropped,
                repeated,
            )
        source = self.chunked.source
        if not positives:
            raise DataError(f"{source}: every row has target 0, so there is no positive to learn from; check the target column")
        if not self.user_kept.any():
            if min_rating is None:
                raise DataError(f"{source}: there are no positive interactions to learn from")
            raise DataError(f"{source}: no interaction has rating >= {min_rating}: lower data.min_rating or set it to null")

    def _rank(self) -> None:
        """Step 4: each kept positive's place among all, with its split draw; each known explicit negative's place."""
        for block in range(self.blocks):  # a negative counts only where setup indexes both its user and its item
            negatives = np.fromfile(self._file("negatives", block), SOURCE_ROW)
            known = self.user_kept[negatives["user"]] & self.item_kept[negatives["item"]]
            _by_key(negatives[known]).tofile(self._file("negatives", block))
        split = self.datamodule.split_kind
        draws = (
            None if split == "cold_items" or self.chunked.given_parts else np.random.default_rng(stream_seed(self.datamodule.seed, "split"))
        )
        self.num_interactions = merge_ranks([self._file("positives", b) for b in range(self.blocks)], SOURCE_ROW, self.chunk_rows, draws)
        self.num_negatives = merge_ranks([self._file("negatives", b) for b in range(self.blocks)], SOURCE_ROW, self.chunk_rows)

    def _split_blocks(self) -> None:
        """Step 5: per block, final indices, the split (or the given parts) and the part rows, sorted by user and
        then by `row`."""
        user_index = np.cumsum(self.user_kept) - 1
        item_index = np.cumsum(self.item_kept) - 1
        self.user_ids, self.item_ids = self.user_ids[self.user_kept], self.item_ids[self.item_kept]
        num_items = len(self.item_ids)
        kind, ratios = self.datamodule.split_kind, self.datamodule.split_ratios
        given = self.chunked.given_parts  # then the files' parts are used, whatever data.split says
        items_part = item_parts(num_items, ratios, self.datamodule.seed) if kind == "cold_items" and not given else None
        self.user_rows = np.zeros(len(self.user_ids), np.int64)
        self.train_counts = np.zeros(num_items, np.int64)
        self.left_out: dict[str, dict[str, int]] = {}
        self.overlap_example: tuple[tuple[int, int], int, int] | None = None
        train_only = valid = test = 0
        full_user: DataError | None = None
        for block in range(self.blocks):
            positives = np.fromfile(self._file("positives", block), SOURCE_ROW)
            negatives = np.fromfile(self._file("negatives", block), SOURCE_ROW)
            if not len(positives):
                continue
            positive_rows = np.fromfile(f"{self._file('positives', block)}{RANKS}", np.int64)
            users, items = user_index[positives["user"]], item_index[positives["item"]]
            if given:
                parts = self._given_parts(positives, positive_rows)
                kept = parts >= 0  # held-out rows left out: in no part, though they keep their `row`
                positives, positive_rows, parts, users, items = (column[kept] for column in (positives, positive_rows, parts, users, items))
            elif items_part is None:
                first = int(users.min())
                draws = np.fromfile(f"{self._file('positives', block)}{DRAWS}", np.float64)
                parts, block_train_only = split_users(
                    users - first, positives["timestamp"], draws, kind, ratios, int(users.max()) - first + 1
                )
                train_only += block_train_only
            else:
                parts = items_part[items]
            rows = np.empty(len(positives) + len(negatives), PART_ROW)
            rows["user"] = np.concatenate([users, user_index[negatives["user"]]])
            rows["item"] = np.concatenate([items, item_index[negatives["item"]]])
            rows["rating"] = np.concatenate([positives["rating"], np.zeros(len(negatives), np.float32)])
            rows["timestamp"] = np.concatenate([positives["timestamp"], np.full(len(negatives), np.nan)])
            rows["part"] = np.concatenate([parts, np.full(len(negatives), NEGATIVE, np.int8)])
            negative_rows = self.num_interactions + np.fromfile(f"{self._file('negatives', block)}{RANKS}", np.int64)
            rows["row"] = np.concatenate([positive_rows, negative_rows])
            if not len(rows):
                continue
            rows = rows[np.lexsort((rows["row"], rows["user"]))]
            rows.tofile(self._file("parts", block))
            first, last = int(rows["user"][0]), int(rows["user"][-1]) + 1
            self.user_rows[first:last] = np.bincount(rows["user"] - first, minlength=last - first)
            train = rows[rows["part"] == TRAIN]
            self.train_counts += np.bincount(train["item"], minlength=num_items)
            valid += int(np.count_nonzero(rows["part"] == VALID))
            test += int(np.count_nonzero(rows["part"] == TEST))
            if full_user is None:
                full_user = _full_user(train, first, last - first, num_items, self.user_ids[first:last])
        if train_only:
            log.warning("%d users have too few interactions for a %s split and are kept in train only", train_only, kind)
        source = self.chunked.source
        if given:
            example = None
            if self.overlap_example is not None:
                _, user, item = self.overlap_example
                example = (self.user_ids[user_index[user]], self.item_ids[item_index[item]])
            try:
                report_left_out(self.left_out, example, self.datamodule.on_overlap)
            except DataError as error:
                raise DataError(f"{source}: {error}") from error
        if not valid:
            raise no_validation_error(source, self.left_out)
        if self.test_rows and not test:
            raise no_test_error(source, self.left_out, self.test_rows, self.test_given)
        if full_user is not None:
            raise full_user

    def _given_parts(self, positives: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """`given_part_codes` of one block's kept positives (whole users; train's users and items known from
        step 3), its counts added to `left_out`; the first held-out pair seen before (least part, then `row`)
        kept as `overlap_example` (part, row), user, item."""
        seen = self.user_trained[positives["user"]] & self.item_trained[positives["item"]]
        pairs = positives["user"] * np.int64(len(self.item_trained)) + positives["item"]
        codes, left_out, overlap = given_part_codes(positives["part"], pairs, seen)
        for part, counts in left_out.items():
            total = self.left_out.setdefault(part, {})
            for reason, count in counts.items():
                total[reason] = total.get(reason, 0) + count
        if overlap.any():
            rows = np.flatnonzero(overlap)
            first = rows[np.lexsort((ranks[rows], positives["part"][rows]))[0]]
            key = (int(positives["part"][first]), int(ranks[first]))
            if self.overlap_example is None or key < self.overlap_example[0]:
                self.overlap_example = (key, int(positives["user"][first]), int(positives["item"][first]))
        return codes

    def _write_parts(self) -> dict[str, Any]:
        """Step 6: items.parquet, the parts (each from the blocks its users span) and the manifest."""
        item_info = self.chunked.items(self.item_ids).drop_duplicates(ITEM).set_index(ITEM)
        titles = item_titles(item_info.reindex(pd.Index(self.item_ids, name=ITEM)).reset_index())
        write_items(self.folder, self.item_ids, titles, self.train_counts)
        check_parts(self.parts, len(self.user_ids), self.chunked.source)
        boundaries = user_blocks(self.user_rows, self.parts)
        entries: list[dict[str, Any]] = []
        writer, code_counts, valid_users = None, np.zeros(4, np.int64), 0

        def finish_part() -> None:  # a part may hold no row (its users' rows all held out and left out)
            nonlocal writer, code_counts, valid_users
            part = len(entries)
            (writer or pq.ParquetWriter(self.folder / part_name(part), PART_SCHEMA)).close()
            first, last = int(boundaries[part]), int(boundaries[part + 1])
            entries.append(part_entry(self.folder, part, self.user_ids[first:last], first, code_counts, valid_users))
            writer, code_counts, valid_users = None, np.zeros(4, np.int64), 0

        for block in range(self.blocks):
            path = self._file("parts", block)
            if not path.exists():
                continue
            rows = np.fromfile(path, PART_ROW)
            while len(rows):
                end = int(np.searchsorted(rows["user"], boundaries[len(entries) + 1]))
                piece, rows = rows[:end], rows[end:]
                if len(piece):
                    if writer is None:
                        writer = pq.ParquetWriter(self.folder / part_name(len(entries)), PART_SCHEMA)
                    writer.write_table(pa.table({name: piece[name] for name in PART_ROW.names}, schema=PART_SCHEMA))
                    code_counts += np.bincount(piece["part"], minlength=4)
                    valid_users += len(np.unique(piece["user"][piece["part"] == VALID]))
                if len(rows):  # the part ends inside this block
                    finish_part()
        while len(entries) < self.parts:
            finish_part()
        facts = {
            "source": self.chunked.source,
            "seed": int(self.datamodule.seed),
            "split": {
                "kind": self.datamodule.split_kind,
                "ratios": list(self.datamodule.split_ratios),
                "min_rating": self.datamodule.min_rating,
            },
            "num_users": len(self.user_ids),
            "num_items": len(self.item_ids),
            "num_interactions": self.num_interactions,
            "num_negatives": self.num_negatives,
            "ratings_missing": self.chunked.ratings_missing,
        }
        return write_manifest(self.folder, facts, entries)


def _sorted_ids(distinct: np.ndarray, index_ids) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """(the ids as chunks give them, the ids as setup keeps them, the order), both sorted as setup's factorisation sorts."""
    ids = np.asarray(index_ids(distinct))
    order = np.argsort(ids, kind="stable")
    return pd.Index(distinct[order], dtype=distinct.dtype), ids[order], order


def _by_key(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort((rows["source_row"], rows["timestamp"]))]


def _full_user(train: np.ndarray, first: int, num_users: int, num_items: int, user_ids: np.ndarray) -> DataError | None:
    """`check_negatives_exist` of one block's training rows: the error naming its first user with every item, or None."""
    csr = UserItemCSR.from_pairs(torch.from_numpy(train["user"] - first), torch.from_numpy(train["item"].copy()), num_users, num_items)
    try:
        check_negatives_exist(csr, user_ids)
    except DataError as error:
        return error
    return None
