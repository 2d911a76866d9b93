"""Writes a set-up DataModule's interactions, split and explicit negatives as a prepared folder.

The folder is built under a hidden sibling name and renamed into place at the end, so `output`
either holds a complete prepared folder or does not exist: a failure or an interrupt leaves nothing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_lightning import __version__
from recsys_lightning.data.datamodule import InteractionDataModule
from recsys_lightning.errors import ConfigError
from recsys_lightning.prepared.layout import ITEMS, MANIFEST, PART_SCHEMA, SCHEMA_VERSION, id_array, part_name, sha256_of, users_name
from recsys_lightning.prepared.share import NEGATIVE, TEST, TRAIN, VALID, user_blocks
from recsys_lightning.runs.atomic import hidden_sibling, remove_unless_someone_elses, write_failure

log = logging.getLogger(__name__)
UNSPLIT = -1  # a row of the interactions no part holds: a pre-split held-out row left out of evaluation


def check_output_free(output: Path) -> None:
    """Before any data is read: a prepared folder is never written over or into, even an empty one."""
    if output.exists() or output.is_symlink():
        raise ConfigError(f"output={output}: already exists; prepare writes a new folder: remove it or choose another path")


def write_prepared(datamodule: InteractionDataModule, output: Path, parts: int) -> dict[str, Any]:
    """Write `datamodule` (after `setup`) into `parts` user blocks at `output`; returns the manifest."""
    check_output_free(output)
    check_parts(parts, datamodule.num_users, datamodule.source)
    codes = _part_codes(datamodule)
    rows, counts = _row_order(datamodule, codes)
    boundaries = user_blocks(counts, parts)
    starts = np.concatenate([[0], np.cumsum(counts)])[boundaries]
    return build_folder(output, lambda folder: _write_folder(datamodule, codes, rows, boundaries, starts, folder))


def check_parts(parts: int, num_users: int, source: str) -> None:
    if not 1 <= parts <= num_users:
        raise ConfigError(f"parts={parts}: {source} has {num_users} users; use 1 <= parts <= {num_users}")


def build_folder(output: Path, fill: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """`fill(folder)` writes a prepared folder (and may keep its working files in it, removed before it
    returns) in a hidden sibling of `output`, renamed to `output` once complete; returns what `fill` does."""
    temporary = hidden_sibling(output)  # named before it is made: an interrupt as it is made still removes it
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(temporary, 0o700)
        manifest = fill(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o777 & ~umask)  # a plain mkdir's permissions, not the private 0700 it was made with
        check_output_free(output)  # made since the start: still never touched
        os.rename(temporary, output)
    except BaseException as error:
        remove_unless_someone_elses(temporary, error)
        if isinstance(error, OSError):
            raise write_failure(output, error, "output") from error
        raise
    return manifest


def _part_codes(datamodule: InteractionDataModule) -> np.ndarray:
    """Each interaction's split part (TRAIN, VALID, TEST), UNSPLIT where no part holds it."""
    split = datamodule.split
    codes = np.full(len(datamodule.interactions), UNSPLIT, dtype=np.int8)
    for code, part_rows in ((TRAIN, split.train), (VALID, split.valid), (TEST, split.test)):
        codes[part_rows] = code
    return codes


def _row_order(datamodule: InteractionDataModule, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The `row` of every row the parts hold, sorted by user and then by single-process order (the split's
    positives, then the explicit negatives as num_interactions + their position), and rows per user.
    Only these two columns are held for every row; the others are gathered one part at a time."""
    kept = np.flatnonzero(codes != UNSPLIT)
    negatives = datamodule.training_data.explicit_negatives.numpy()
    rows = np.concatenate([kept, len(codes) + np.arange(len(negatives))])
    users = np.concatenate([datamodule.interactions.users[kept], negatives[:, 0]])
    order = np.argsort(users, kind="stable")  # rows ascend within each user, as they did
    return rows[order], np.bincount(users, minlength=datamodule.num_users)


def _block(datamodule: InteractionDataModule, codes: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The part columns of `rows`: a positive's from the interactions, an explicit negative's (rating 0, no timestamp) from its pair."""
    interactions = datamodule.interactions
    positive = rows < len(interactions)
    found, negatives = rows[positive], datamodule.training_data.explicit_negatives.numpy()[rows[~positive] - len(interactions)]

    def gather(column: np.ndarray, negative_value: Any, dtype: type) -> np.ndarray:
        out = np.empty(len(rows), dtype)
        out[positive] = column[found]
        out[~positive] = negative_value
        return out

    return {
        "user": gather(interactions.users, negatives[:, 0], np.int64),
        "item": gather(interactions.items, negatives[:, 1], np.int64),
        "rating": gather(interactions.ratings, 0.0, np.float32),
        "timestamp": gather(interactions.timestamps, np.nan, np.float64),
        "part": gather(codes, NEGATIVE, np.int8),
        "row": rows,
    }


def _write_folder(
    datamodule: InteractionDataModule, codes: np.ndarray, rows: np.ndarray, boundaries: np.ndarray, starts: np.ndarray, folder: Path
) -> dict[str, Any]:
    catalogue = datamodule.training_data.catalogue
    write_items(folder, np.asarray(catalogue.item_ids), catalogue.titles, catalogue.popularity.numpy())
    user_ids = np.asarray(datamodule.interactions.user_ids)
    parts = []
    for k in range(len(boundaries) - 1):
        block = _block(datamodule, codes, rows[starts[k] : starts[k + 1]])
        first, last = int(boundaries[k]), int(boundaries[k + 1])
        pq.write_table(pa.table(block, schema=PART_SCHEMA), folder / part_name(k))
        valid_users = len(np.unique(block["user"][block["part"] == VALID]))
        parts.append(part_entry(folder, k, user_ids[first:last], first, np.bincount(block["part"], minlength=4), valid_users))
    facts = {
        "source": datamodule.source,
        "seed": int(datamodule.seed),
        "split": {"kind": datamodule.split_kind, "ratios": list(datamodule.split_ratios), "min_rating": datamodule.min_rating},
        "num_users": datamodule.num_users,
        "num_items": datamodule.num_items,
        "num_interactions": len(datamodule.interactions),
        "num_negatives": len(datamodule.training_data.explicit_negatives),
        "ratings_missing": datamodule.training_data.ratings_missing,
    }
    return write_manifest(folder, facts, parts)


def write_items(folder: Path, item_ids: np.ndarray, titles: list[str] | None, train_counts: np.ndarray) -> None:
    """items.parquet: raw ids in index order, titles where the source has them, training positives per item."""
    items = {"item_id": id_array(item_ids)}
    if titles is not None:
        items["title"] = pa.array(titles, type=pa.string())
    items["train_count"] = pa.array(train_counts, type=pa.int64())
    pq.write_table(pa.table(items), folder / ITEMS)


def part_entry(folder: Path, k: int, user_ids: np.ndarray, first_user: int, code_counts: np.ndarray, valid_users: int) -> dict[str, Any]:
    """Writes block k's users file (its part file is written already) and returns the manifest's entry of the
    block: `code_counts` are its rows per part code, `valid_users` its users with a validation row."""
    pq.write_table(pa.table({"user_id": id_array(user_ids)}), folder / users_name(k))
    return {
        "files": {"rows": _file_record(folder, part_name(k)), "users": _file_record(folder, users_name(k))},
        "first_user": first_user,
        "num_users": len(user_ids),
        "rows": int(code_counts.sum()),
        "train": int(code_counts[TRAIN]),
        "valid": int(code_counts[VALID]),
        "test": int(code_counts[TEST]),
        "negatives": int(code_counts[NEGATIVE]),
        "valid_users": int(valid_users),
    }


def write_manifest(folder: Path, facts: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """manifest.json of a folder whose items and parts are written: `facts` are the source, seed, split and
    counts (keys as `_write_folder` gives them), `parts` the entries of `part_entry`."""
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "recsys_lightning_version": __version__,
        **{key: facts[key] for key in ("source", "seed", "split", "num_users", "num_items", "num_interactions", "num_negatives")},
        "ratings_missing": facts["ratings_missing"],
        "part_codes": {"train": TRAIN, "valid": VALID, "test": TEST, "negative": NEGATIVE},
        "items": _file_record(folder, ITEMS),
        "parts": parts,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    log.info(
        "%s: %d users, %d items, %d rows in %d parts (%s rows each at most)",
        facts["source"],
        facts["num_users"],
        facts["num_items"],
        sum(part["rows"] for part in parts),
        len(parts),
        f"{max(part['rows'] for part in parts):,}",
    )
    return manifest


def _file_record(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    return {"name": name, "sha256": sha256_of(path), "bytes": path.stat().st_size}
