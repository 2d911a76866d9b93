"""The prepared folder's layout (schema version 1), shared by its writer and its reader.

manifest.json            counts, split settings, seed, and every file's sha256 and size
items.parquet            item_id (raw, verbatim), title (when the source has titles), train_count
part-0000k.parquet       rows of block k's users: user, item, rating, timestamp, part, row
users-0000k.parquet      user_id (raw, verbatim) of block k's users, in index order
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ITEMS = "items.parquet"
PART_GLOB, USERS_GLOB = "part-*.parquet", "users-*.parquet"
# A part row: global user and item indices, the split part (share.TRAIN/VALID/TEST/NEGATIVE), and `row`, its
# position in the single-process interactions (explicit negatives: num_interactions + their position).
PART_SCHEMA = pa.schema(
    [
        ("user", pa.int64()),
        ("item", pa.int64()),
        ("rating", pa.float32()),
        ("timestamp", pa.float64()),
        ("part", pa.int8()),
        ("row", pa.int64()),
    ]
)
ID_TYPES = (pa.int64(), pa.string())  # raw ids: integers when the source's are, else text kept verbatim


def part_name(k: int) -> str:
    return f"part-{k:05d}.parquet"


def users_name(k: int) -> str:
    return f"users-{k:05d}.parquet"


def sha256_of(path: Path) -> str:
    """Streamed in 1 MiB blocks: a part of gigabytes is hashed in constant memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def id_array(ids) -> pa.Array:
    """Raw ids as Parquet keeps them: int64 when they are integers, else the text of each, unchanged."""
    if getattr(ids, "dtype", None) is not None and ids.dtype.kind == "i":
        return pa.array(ids, type=pa.int64())
    return pa.array([str(raw_id) for raw_id in ids], type=pa.string())
