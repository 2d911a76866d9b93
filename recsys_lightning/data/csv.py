"""Interactions from the user's own CSV/TSV files, with errors that name the file, the line or column,
and what to do.

Reading is pandas' C parser with explicit dtypes; ids are read as categories, so string or integer
ids of any size cost one small code per row, and the raw ids are kept for output.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_lightning.data.datamodule import InteractionDataModule, LoadedInteractions
from recsys_lightning.data.interactions import ITEM, PART, RATING, TARGET, TIMESTAMP, USER
from recsys_lightning.errors import DataError

log = logging.getLogger(__name__)

COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zip", ".zst"}


def infer_separator(path: Path) -> str:
    """Tab for .tsv/.tab (also compressed, e.g. .tsv.gz), comma otherwise."""
    suffixes = [s for s in path.suffixes if s.lower() not in COMPRESSION_SUFFIXES]
    return "\t" if suffixes and suffixes[-1].lower() in {".tsv", ".tab"} else ","


def read_interactions(
    path: str | Path,
    *,
    user_col: str,
    item_col: str,
    rating_col: str | None = "rating",
    timestamp_col: str | None = "timestamp",
    target_col: str | None = "target",
    sep: str | None = None,
    encoding: str = "utf-8",
) -> pd.DataFrame:
    """Read one interaction file into columns user_id, item_id, rating, timestamp (and target if present).

    User and item columns must exist; rating, timestamp and target are used when the file has them.
    Every problem a user can cause raises DataError with the file and the line or column.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; point data.path (or data.train_path/valid_path/test_path) at an existing file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; it needs a header line and one interaction per line")
    sep = sep or infer_separator(path)
    header = _read(path, sep=sep, encoding=encoding, nrows=0)
    found = list(header.columns)
    if len(found) == 1:
        raise DataError(
            f"{path}: only one column found ({found[0]!r}) with separator {sep!r}; "
            "set data.sep to the file's separator (e.g. data.sep=';' or data.sep='\\t')"
        )
    for key, column in (("data.user_col", user_col), ("data.item_col", item_col)):
        if column not in found:
            raise DataError(f"{path}: no column {column!r}; columns found: {', '.join(found)}. Set {key} to the right one")
    optional = {RATING: rating_col, TIMESTAMP: timestamp_col, TARGET: target_col}
    present = {name: column for name, column in optional.items() if column and column in found}
    dtypes = {user_col: "category", item_col: "category"}
    frame = _read(path, sep=sep, encoding=encoding, usecols=[user_col, item_col, *present.values()], dtype=dtypes)
    if frame.empty:
        raise DataError(f"{path}: has a header but no rows; add interactions below the header")

    for column in (user_col, item_col):
        missing = frame[column].isna().to_numpy()
        if missing.any():
            line = _first_line(missing)
            raise DataError(f"{path}: line {line}: empty {column!r}; every row needs a user and an item id (remove or fill it)")
    result = pd.DataFrame({USER: frame[user_col], ITEM: frame[item_col]})
    result[RATING] = _numeric(frame, present[RATING], path).astype(np.float32) if RATING in present else np.float32(1.0)
    result[TIMESTAMP] = _timestamps(frame, present[TIMESTAMP], path) if TIMESTAMP in present else np.arange(len(frame), dtype=np.float64)
    if TARGET in present:
        target = _numeric(frame, present[TARGET], path)
        outside = ~np.isin(target, (0, 1))
        if outside.any():
            line = _first_line(outside)
            raw = frame[present[TARGET]].iloc[line - 2]
            raise DataError(f"{path}: line {line}: {present[TARGET]!r} is {raw}; targets must be 0 or 1")
        result[TARGET] = target.astype(np.int8)
    return result


def _read(path: Path, **read_csv_args) -> pd.DataFrame:
    try:
        return pd.read_csv(path, compression="infer", skip_blank_lines=False, **read_csv_args)
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not {read_csv_args.get('encoding', 'utf-8')} text (byte {error.object[error.start:error.start + 1]!r} "
            f"at offset {error.start}); re-save it as UTF-8 or set data.encoding (e.g. data.encoding=latin-1)"
        ) from error
    except (EOFError, zlib.error, OSError) as error:
        raise DataError(f"{path}: cannot be decompressed or read ({error}); the archive may be corrupt or truncated") from error
    except pd.errors.EmptyDataError as error:
        raise DataError(f"{path}: no header line found; the first line must name the columns (e.g. userId,itemId)") from error
    except pd.errors.ParserError as error:
        detail = str(error).strip().splitlines()[-1]
        raise DataError(f"{path}: {detail}; check data.sep and quoting") from error
    except ValueError as error:  # pandas reports unparseable dtypes and bad usecols as ValueError
        raise DataError(f"{path}: {error}") from error


def read_item_titles(path: str | Path, *, item_col: str, title_col: str, sep: str | None = None, encoding: str = "utf-8") -> pd.DataFrame:
    """Item metadata file -> columns item_id, title; titles label recommendations and the projector."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; point data.items_path at a file with columns {item_col!r} and {title_col!r}, or set it to null")
    sep = sep or infer_separator(path)
    found = list(_read(path, sep=sep, encoding=encoding, nrows=0).columns)
    for key, column in (("data.item_col", item_col), ("data.title_col", title_col)):
        if column not in found:
            raise DataError(f"{path}: no column {column!r}; columns found: {', '.join(found)}. Set {key} to the right one")
    frame = _read(path, sep=sep, encoding=encoding, usecols=[item_col, title_col], dtype=str, keep_default_na=False)
    return pd.DataFrame({ITEM: frame[item_col], "title": frame[title_col]})


def _first_line(bad_rows: np.ndarray) -> int:
    """File line of the first flagged data row: rows count from 0, and line 1 is the header."""
    return int(np.argmax(bad_rows)) + 2


def _numeric(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = (values.isna() & frame[column].notna()).to_numpy() | frame[column].isna().to_numpy()
    if bad.any():
        line = _first_line(bad)
        raise DataError(f"{path}: line {line}: {column!r} is {frame[column].iloc[line - 2]!r}, not a number; fix or remove that row")
    return values.to_numpy(np.float64)


def _timestamps(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    """Numbers as they are; date strings (ISO and the like) as seconds since the epoch."""
    if pd.api.types.is_numeric_dtype(frame[column]):
        return _numeric(frame, column, path)
    parsed = pd.to_datetime(frame[column], errors="coerce", utc=True)
    bad = parsed.isna().to_numpy()
    if bad.any():
        line = _first_line(bad)
        raise DataError(f"{path}: line {line}: {column!r} is {frame[column].iloc[line - 2]!r}, neither a number nor a date")
    return (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()


def k_core(frame: pd.DataFrame, min_user: int, min_item: int, path: str) -> pd.DataFrame:
    """Drop users and items with too few interactions, repeatedly, until every one left has enough."""
    if min_user <= 1 and min_item <= 1:
        return frame
    users, items = frame[USER].cat.codes.to_numpy(), frame[ITEM].cat.codes.to_numpy()
    keep = np.ones(len(frame), dtype=bool)
    while True:
        user_counts = np.bincount(users[keep], minlength=users.max() + 1)
        item_counts = np.bincount(items[keep], minlength=items.max() + 1)
        still = keep & (user_counts[users] >= min_user) & (item_counts[items] >= min_item)
        if still.sum() == keep.sum():
            break
        keep = still
    if not keep.any():
        raise DataError(
            f"{path}: k-core filtering (data.min_user_interactions={min_user}, data.min_item_interactions={min_item}) "
            "removed every interaction; lower those thresholds"
        )
    log.info("k-core kept %d of %d interactions", int(keep.sum()), len(frame))
    return frame[keep]


class CsvDataModule(InteractionDataModule):
    """Your own interactions: one file split by `split`, or pre-split train/valid(/test) files used as given."""

    def __init__(
        self,
        path: str | None = None,
        train_path: str | None = None,
        valid_path: str | None = None,
        test_path: str | None = None,
        sep: str | None = None,
        encoding: str = "utf-8",
        user_col: str = "userId",
        item_col: str = "itemId",
        rating_col: str | None = "rating",
        timestamp_col: str | None = "timestamp",
        target_col: str | None = "target",
        min_user_interactions: int = 0,
        min_item_interactions: int = 0,
        items_path: str | None = None,
        title_col: str = "title",
        **split_and_batching,
    ) -> None:
        super().__init__(**split_and_batching)
        if (path is None) == (train_path is None):
            raise DataError("set either data.path (one file to split) or data.train_path and data.valid_path (pre-split files)")
        if train_path is not None and valid_path is None:
            raise DataError("data.train_path needs data.valid_path too (data.test_path is optional)")
        self.paths = {"train": train_path, "valid": valid_path, "test": test_path} if path is None else {"all": path}
        self.read_options = dict(user_col=user_col, item_col=item_col, rating_col=rating_col, timestamp_col=timestamp_col,
                                 target_col=target_col, sep=sep, encoding=encoding)  # fmt: skip
        self.min_user_interactions = min_user_interactions
        self.min_item_interactions = min_item_interactions
        self.items_path = items_path
        self.title_col = title_col

    def load(self) -> LoadedInteractions:
        parts = {name: read_interactions(path, **self.read_options) for name, path in self.paths.items() if path}
        first = next(iter(self.paths.values()))
        parts[next(iter(parts))] = k_core(next(iter(parts.values())), self.min_user_interactions, self.min_item_interactions, first)
        if len(parts) > 1:
            for code, name in enumerate(("train", "valid", "test")):
                if name in parts:
                    parts[name] = parts[name].assign(**{PART: np.int8(code)})
        frame = pd.concat(parts.values(), ignore_index=True) if len(parts) > 1 else parts["all"]
        for column in (USER, ITEM):  # categories of different files merge into one
            frame[column] = frame[column].astype("category") if frame[column].dtype != "category" else frame[column]
        source = ", ".join(f"{name}={path}" for name, path in self.paths.items() if path)
        items = pd.DataFrame({ITEM: pd.Series([], dtype=object), "title": []})
        if self.items_path:
            items = read_item_titles(self.items_path, item_col=self.read_options["item_col"], title_col=self.title_col,
                                     sep=self.read_options["sep"], encoding=self.read_options["encoding"])  # fmt: skip
        return LoadedInteractions(frame, items, source=f"csv:{source}")
