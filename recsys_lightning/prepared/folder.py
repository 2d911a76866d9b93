"""A prepared folder read back as untrusted files: `PreparedFolder`, the `ShareSource` on disk.

`open` checks the manifest (types, ranges, sums, file names) and every file's presence and size, and
reads the items file after its sha256; a part is hashed before Parquet reads a byte of it, and its
columns and values are checked against the manifest. So nothing a file says sizes an allocation
before a check has bounded it by what the folder really holds.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.errors import ConfigError, DataError, first_line, quote
from recsys_lightning.prepared.layout import (
    ID_TYPES,
    ITEMS,
    MANIFEST,
    PART_GLOB,
    PART_SCHEMA,
    SCHEMA_VERSION,
    USERS_GLOB,
    part_name,
    sha256_of,
    users_name,
)
from recsys_lightning.prepared.share import NEGATIVE, TEST, TRAIN, VALID, UserShare

MANIFEST_LIMIT = 64 << 20  # bytes: about 300 bytes a part, so a million parts still fit
# A prepared row takes a few bytes compressed (ML-100K: 12); a file claiming far more rows than that is a
# crafted one whose decoding would allocate without bound, so it is refused before Parquet reads it.
ROWS_PER_BYTE = 16
SHA256 = re.compile(r"[0-9a-f]{64}")
COUNT_KEYS = ("rows", "train", "valid", "test", "negatives", "valid_users")
PART_KEYS = frozenset({"files", "first_user", "num_users", *COUNT_KEYS})
MANIFEST_KEYS = frozenset(
    {
        "schema_version",
        "recsys_lightning_version",
        "source",
        "seed",
        "split",
        "num_users",
        "num_items",
        "num_interactions",
        "num_negatives",
        "ratings_missing",
        "part_codes",
        "items",
        "parts",
    }
)
REMEDY = "run prepare again into a new folder"
Refusal = Callable[[str], DataError]  # the manifest's error, given what is wrong


@dataclass(frozen=True)
class FileRecord:
    name: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class PartRecord:
    """One block of users as the manifest describes it."""

    rows_file: FileRecord
    users_file: FileRecord
    first_user: int
    num_users: int
    rows: int
    train: int
    valid: int
    test: int
    negatives: int
    valid_users: int


class PreparedFolder:
    """A checked prepared folder; `open` is the way to get one."""

    def __init__(self, path: Path, manifest: dict[str, Any], manifest_sha256: str, parts: list[PartRecord], items: pa.Table) -> None:
        self.path = path
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256
        self.parts = parts
        self.num_users: int = manifest["num_users"]
        self.num_items: int = manifest["num_items"]
        self.num_rows: int = manifest["num_interactions"] + manifest["num_negatives"]
        self.source: str = manifest["source"]
        self.ratings_missing: str | None = manifest["ratings_missing"]
        self.item_ids = items.column("item_id").to_numpy(zero_copy_only=False)
        self.titles = items.column("title").to_pylist() if "title" in items.column_names else None
        self.item_train_counts = items.column("train_count").to_numpy().copy()  # writable: torch shares it
        self.valid_users = sum(part.valid_users for part in parts)

    @classmethod
    def open(cls, path: str | Path) -> PreparedFolder:
        """The folder at `path`, checked as the module docstring says; DataError naming the file otherwise."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{path}: a file, not a folder; point it at the folder python -m recsys_lightning.prepare wrote")
        if not path.is_dir():
            raise ConfigError(f"{path}: no such folder; point it at a folder written by python -m recsys_lightning.prepare")
        if not manifest_path.is_file():
            raise DataError(f"{manifest_path}: missing, so {path} is not a prepared folder (or was cut short); {REMEDY}")
        if manifest_path.stat().st_size > MANIFEST_LIMIT:
            raise DataError(f"{manifest_path}: larger than {MANIFEST_LIMIT >> 20} MiB, not a manifest prepare writes; {REMEDY}")
        raw = manifest_path.read_bytes()
        try:
            manifest = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as error:
            raise DataError(f"{manifest_path}: not valid JSON ({first_line(error, 120)}); {REMEDY}") from error
        parts = _checked_manifest(manifest, manifest_path)
        _check_files_listed(path, parts)
        items = _read_items(path, manifest)
        return cls(path, manifest, hashlib.sha256(raw).hexdigest(), parts, items)

    def parts_of(self, rank: int, world: int) -> range:
        """The contiguous parts rank `rank` of `world` reads: [rank * P // world, (rank + 1) * P // world)."""
        count = len(self.parts)
        if type(world) is not int or not 1 <= world <= count:
            raise ConfigError(
                f"{self.path}: prepared in {count} parts, so at most {count} processes can share it, not {world}; "
                f"run prepare again with parts >= {world} (a multiple of it balances best)"
            )
        if type(rank) is not int or not 0 <= rank < world:
            raise ConfigError(f"rank {rank} of {world} processes: a rank is 0 .. {world - 1}")
        return range(rank * count // world, (rank + 1) * count // world)

    def train_rows_per_rank(self, world: int) -> list[int]:
        return [sum(self.parts[k].train for k in self.parts_of(rank, world)) for rank in range(world)]

    def read_share(self, rank: int, world: int) -> UserShare:
        indices = self.parts_of(rank, world)
        blocks = [self._read_part(k) for k in indices]
        users = [block[0] for block in blocks]
        columns = {name: np.concatenate([block[1][name] for block in blocks]) for name in PART_SCHEMA.names}
        order = np.argsort(columns["row"])  # rows are distinct (checked next), so no sort needs to be stable
        repeated = np.flatnonzero(np.diff(columns["row"][order]) == 0)
        if len(repeated):
            names = f"{self.parts[indices[0]].rows_file.name} .. {self.parts[indices[-1]].rows_file.name}"
            raise DataError(f"{self.path}: {names} hold row position {columns['row'][order[repeated[0]]]} twice; {REMEDY}")
        return UserShare(
            first_user=self.parts[indices[0]].first_user,
            num_users=sum(len(block) for block in users),
            users=columns["user"][order],
            items=columns["item"][order],
            ratings=columns["rating"][order],
            timestamps=columns["timestamp"][order],
            parts=columns["part"][order],
            user_ids=np.concatenate(users),
        )

    def reference(self) -> dict[str, str]:
        return {"path": str(self.path.resolve()), "manifest_sha256": self.manifest_sha256}

    def catalogue(self) -> Catalogue:
        """The whole catalogue, as `Catalogue.from_parts` builds it in one process: reads every part."""
        share = self.read_share(0, 1)
        users, items = torch.from_numpy(share.users), torch.from_numpy(share.items)
        csrs = [
            UserItemCSR.from_pairs(users[keep], items[keep], self.num_users, self.num_items, values=torch.from_numpy(share.ratings[keep]))
            for keep in (torch.from_numpy(share.parts == code) for code in (TRAIN, VALID, TEST))
        ]
        user_ids = pd.Index(share.user_ids)
        if not user_ids.is_unique:
            raise DataError(f"{self.path}: two users files list the same user id; {REMEDY}")
        item_info = pd.DataFrame({"title": self.titles} if self.titles is not None else {})
        return Catalogue.from_parts(user_ids, pd.Index(self.item_ids), csrs, item_info)

    def _read_part(self, k: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Part k's user ids and rows, each file hashed before it is parsed and checked after."""
        part = self.parts[k]
        rows_path, users_path = self.path / part.rows_file.name, self.path / part.users_file.name
        table = _read_checked(rows_path, part.rows_file, part.rows)
        if table.schema.remove_metadata() != PART_SCHEMA:
            raise DataError(f"{rows_path}: columns {_schema_text(table.schema)}, not {_schema_text(PART_SCHEMA)}; {REMEDY}")
        columns = {name: table.column(name).to_numpy() for name in PART_SCHEMA.names}
        _check_part_values(rows_path, columns, part, self.num_items, self.num_rows)
        user_table = _read_checked(users_path, part.users_file, part.num_users)
        if user_table.column_names != ["user_id"] or user_table.schema.field("user_id").type not in ID_TYPES:
            raise DataError(f"{users_path}: columns {_schema_text(user_table.schema)}, not user_id (int64 or string); {REMEDY}")
        user_ids = user_table.column("user_id").to_numpy(zero_copy_only=False)
        if not pd.Index(user_ids).is_unique:
            raise DataError(f"{users_path}: user_id lists a user more than once; {REMEDY}")
        return user_ids, columns


def _checked_manifest(manifest: Any, path: Path) -> list[PartRecord]:
    """Every field of the manifest type- and range-checked, the parts' sums and user blocks consistent."""

    def bad(detail: str) -> DataError:
        return DataError(f"{path}: {detail}; {REMEDY}")

    if not isinstance(manifest, dict):
        raise bad(f"a JSON {type(manifest).__name__}, not an object")
    version = manifest.get("schema_version")
    if type(version) is int and version > SCHEMA_VERSION:
        raise DataError(
            f"{path}: schema version {version} is newer than the {SCHEMA_VERSION} this code reads; "
            "use the recsys_lightning that prepared it, or prepare again with this one"
        )
    if type(version) is not int or version != SCHEMA_VERSION:
        raise bad(f"schema_version is {quote(version, 40)}, not {SCHEMA_VERSION}")
    if set(manifest) != MANIFEST_KEYS:
        odd = sorted(set(manifest) ^ MANIFEST_KEYS)
        raise bad(f"its keys differ from a manifest's at {quote(odd[0], 40)}")
    if not isinstance(manifest["source"], str) or not isinstance(manifest["recsys_lightning_version"], str):
        raise bad("source and recsys_lightning_version must be strings")
    if not (manifest["ratings_missing"] is None or isinstance(manifest["ratings_missing"], str)):
        raise bad("ratings_missing must be a string or null")
    if not isinstance(manifest["split"], dict) or not isinstance(manifest["part_codes"], dict):
        raise bad("split and part_codes must be objects")
    split = manifest["split"]
    if (
        set(split) != {"kind", "ratios", "min_rating"}
        or not isinstance(split["kind"], str)
        or not isinstance(split["ratios"], list)
        or not all(_is_number(share) for share in split["ratios"])
        or not (split["min_rating"] is None or _is_number(split["min_rating"]))
    ):
        raise bad("split must be an object of kind (a string), ratios (numbers) and min_rating (a number or null)")
    if manifest["part_codes"] != {"train": TRAIN, "valid": VALID, "test": TEST, "negative": NEGATIVE}:
        raise bad(f"part_codes are not train {TRAIN}, valid {VALID}, test {TEST}, negative {NEGATIVE}")
    for key in ("seed", "num_users", "num_items", "num_interactions", "num_negatives"):
        _count(manifest, key, bad, low=1 if key in ("num_users", "num_items") else 0)
    _file_record(manifest["items"], ITEMS, "items", bad)
    records = manifest["parts"]
    if not isinstance(records, list) or not records:
        raise bad("parts must be a non-empty list")
    parts = [_part_record(record, k, bad) for k, record in enumerate(records)]
    next_user = 0
    for k, part in enumerate(parts):
        if part.first_user != next_user:
            raise bad(f"part {k} starts at user {part.first_user}, not {next_user}: the parts must cover the users contiguously")
        next_user += part.num_users
    if next_user != manifest["num_users"]:
        raise bad(f"the parts hold {next_user} users, not num_users {manifest['num_users']}")
    negatives = sum(part.negatives for part in parts)
    if negatives != manifest["num_negatives"]:
        raise bad(f"the parts hold {negatives} explicit negatives, not num_negatives {manifest['num_negatives']}")
    positives = sum(part.train + part.valid + part.test for part in parts)
    if positives > manifest["num_interactions"]:
        raise bad(f"the parts hold {positives} interactions, more than num_interactions {manifest['num_interactions']}")
    return parts


def _part_record(record: Any, k: int, bad: Refusal) -> PartRecord:
    if not isinstance(record, dict) or set(record) != PART_KEYS:
        raise bad(f"part {k} is not an object with the keys {', '.join(sorted(PART_KEYS))}")
    files = record["files"]
    if not isinstance(files, dict) or set(files) != {"rows", "users"}:
        raise bad(f"part {k}'s files must be an object of rows and users")
    for key in ("first_user", "num_users", *COUNT_KEYS):
        _count(record, key, bad, f"part {k}'s ", low=1 if key == "num_users" else 0)
    part = PartRecord(
        rows_file=_file_record(files["rows"], part_name(k), f"part {k}'s rows file", bad),
        users_file=_file_record(files["users"], users_name(k), f"part {k}'s users file", bad),
        **{key: record[key] for key in ("first_user", "num_users", *COUNT_KEYS)},
    )
    summed = part.train + part.valid + part.test + part.negatives
    if part.rows != summed:
        raise bad(f"part {k} has {part.rows} rows, not train + valid + test + negatives = {summed}")
    if part.valid_users > min(part.num_users, part.valid):
        raise bad(f"part {k} has {part.valid_users} users with validation rows, more than its users or validation rows")
    return part


def _file_record(record: Any, name: str, what: str, bad: Refusal) -> FileRecord:
    """A file of the folder: its name is the one the layout gives (never a path out of the folder)."""
    if not isinstance(record, dict) or set(record) != {"name", "sha256", "bytes"}:
        raise bad(f"{what} is not an object of name, sha256 and bytes")
    if record["name"] != name:
        raise bad(f"{what} is named {quote(record['name'], 80)}, not {name}")
    if not isinstance(record["sha256"], str) or not SHA256.fullmatch(record["sha256"]):
        raise bad(f"{what}'s sha256 is not 64 lowercase hex digits")
    _count(record, "bytes", bad, f"{what}'s ")
    return FileRecord(name, record["sha256"], record["bytes"])


def _count(record: dict[str, Any], key: str, bad: Refusal, where: str = "", low: int = 0) -> int:
    value = record[key]
    if type(value) is not int or value < low:
        raise bad(f"{where}{key} is {quote(value, 40)}, not an integer >= {low}")
    return value


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _check_files_listed(path: Path, parts: list[PartRecord]) -> None:
    """Every file the manifest names exists with its recorded size; no part or users file is unlisted."""
    listed = {ITEMS} | {record.name for part in parts for record in (part.rows_file, part.users_file)}
    for pattern in (PART_GLOB, USERS_GLOB):
        for found in sorted(path.glob(pattern)):
            if found.name not in listed:
                raise DataError(f"{found}: not in {path / MANIFEST}, so it is from another prepare or was added; remove it or {REMEDY}")
    for part in parts:
        for record in (part.rows_file, part.users_file):
            _check_size(path / record.name, record)


def _check_size(path: Path, record: FileRecord) -> None:
    if path.is_symlink():
        raise DataError(f"{path}: a symbolic link; prepare writes plain files, so this one was replaced: {REMEDY}")
    if not path.is_file():
        raise DataError(f"{path}: missing, though {path.parent / MANIFEST} lists it; restore it or {REMEDY}")
    size = path.stat().st_size
    if size != record.bytes:
        raise DataError(f"{path}: {size} bytes, not the {record.bytes} {MANIFEST} records (truncated or replaced); {REMEDY}")


def _read_checked(path: Path, record: FileRecord, rows: int) -> pa.Table:
    """A Parquet file read only once its size and sha256 are the manifest's and its row count (from the footer) is `rows`."""
    _check_size(path, record)
    if sha256_of(path) != record.sha256:
        raise DataError(f"{path}: its sha256 is not the one {MANIFEST} records: changed, or from another prepare; {REMEDY}")
    try:
        if rows > ROWS_PER_BYTE * record.bytes:
            raise DataError(f"{path}: {MANIFEST} records {rows} rows in {record.bytes} bytes, more than prepare ever packs; {REMEDY}")
        parquet = pq.ParquetFile(path)
        if parquet.metadata.num_rows != rows:
            raise DataError(f"{path}: {parquet.metadata.num_rows} rows, not the {rows} {MANIFEST} records; {REMEDY}")
        table = parquet.read()
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({first_line(error, 120)}); {REMEDY}") from error
    nulls = [name for name, column in zip(table.column_names, table.columns) if column.null_count]
    if nulls:
        raise DataError(f"{path}: column {quote(nulls[0], 40)} holds nulls, which prepare never writes; {REMEDY}")
    return table


def _read_items(path: Path, manifest: dict[str, Any]) -> pa.Table:
    record = FileRecord(**manifest["items"])
    items_path = path / ITEMS
    table = _read_checked(items_path, record, manifest["num_items"])
    names = table.column_names
    if names not in (["item_id", "train_count"], ["item_id", "title", "train_count"]):
        raise DataError(f"{items_path}: columns {_schema_text(table.schema)}, not item_id, [title,] train_count; {REMEDY}")
    types = table.schema
    if types.field("item_id").type not in ID_TYPES or types.field("train_count").type != pa.int64():
        raise DataError(f"{items_path}: columns {_schema_text(types)}: item_id must be int64 or string, train_count int64; {REMEDY}")
    if "title" in names and types.field("title").type != pa.string():
        raise DataError(f"{items_path}: title must be a string column; {REMEDY}")
    if not pd.Index(table.column("item_id").to_numpy(zero_copy_only=False)).is_unique:
        raise DataError(f"{items_path}: item_id lists an item more than once; {REMEDY}")
    if len(table) and pc.min(table.column("train_count")).as_py() < 0:
        raise DataError(f"{items_path}: train_count holds a negative count; {REMEDY}")
    return table


def _check_part_values(path: Path, columns: dict[str, np.ndarray], part: PartRecord, num_items: int, num_rows: int) -> None:
    """Users in the part's block, items in the catalogue, part codes known and counted as the manifest says,
    a crafted folder whose manifest matches its files is refused here, not deep in training."""

    def bad(detail: str) -> DataError:
        return DataError(f"{path}: {detail}; {REMEDY}")

    users, items, codes, rows = columns["user"], columns["item"], columns["part"], columns["row"]
    if len(users) and not (part.first_user <= users.min() and users.max() < part.first_user + part.num_users):
        raise bad(f"user indices outside its block {part.first_user} .. {part.first_user + part.num_users - 1}")
    if len(items) and not (0 <= items.min() and items.max() < num_items):
        raise bad(f"item indices outside 0 .. {num_items - 1}")
    if len(codes) and not (0 <= codes.min() and codes.max() <= NEGATIVE):
        raise bad(f"part codes outside {TRAIN} .. {NEGATIVE}")
    if len(rows) and not (0 <= rows.min() and rows.max() < num_rows):
        raise bad(f"row positions outside 0 .. {num_rows - 1}")
    counted = np.bincount(codes, minlength=NEGATIVE + 1).tolist()
    if counted != [part.train, part.valid, part.test, part.negatives]:
        raise bad(f"train/valid/test/negative rows {counted}, not the manifest's {[part.train, part.valid, part.test, part.negatives]}")
    if np.count_nonzero(np.bincount(users[codes == VALID] - part.first_user, minlength=part.num_users)) != part.valid_users:
        raise bad(f"users with validation rows differ from the manifest's {part.valid_users}")


def _schema_text(schema: pa.Schema) -> str:
    return quote(", ".join(f"{field.name} {field.type}" for field in schema), 160)
