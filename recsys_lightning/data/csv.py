"""Interactions from the user's own CSV/TSV files, with errors that name the file, the line or column,
and what to do.

Reading is pandas' C parser in chunks. Ids are read as text and kept verbatim (`007`, `7` and `+7` are
three ids), each chunk's ids become category codes so 20M rows cost one small code per row, and the
ids are stored as integers only when every one of them is the exact decimal form of an int64.
"""

from __future__ import annotations

import logging
import lzma
import os
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals
from pandas.io.common import get_handle

from recsys_lightning import progress
from recsys_lightning.data.chunked import ChunkedInteractions
from recsys_lightning.data.chunked_k_core import ChunkedKCore
from recsys_lightning.data.csv_fields import FieldCheckedStream, separator_byte
from recsys_lightning.data.datamodule import InteractionDataModule, LoadedInteractions
from recsys_lightning.data.features import FeatureColumns, refuse_unmatched
from recsys_lightning.data.interactions import ITEM, PART, RATING, TARGET, TIMESTAMP, USER
from recsys_lightning.data.split import check_overlap_action
from recsys_lightning.errors import QUOTE_LIMIT, ConfigError, DataError, cut, quote
from recsys_lightning.ranges import TEXT, Choice, Encoding, ListOf, Range

log = logging.getLogger(__name__)

COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zip", ".zst"}
OPTIONAL_DECOMPRESSORS = {".zst": "zstandard"}  # pandas needs these packages for these suffixes
CHUNK_ROWS = 1 << 20  # rows parsed at once: bounds the memory the ids' text takes before it becomes codes
PART_CODES = {"train": 0, "valid": 1, "test": 2}  # a pre-split file's part, as the PART column holds it
CANONICAL_INT = r"0|-?[1-9][0-9]{0,18}"  # the only spellings str(int(s)) gives back unchanged
# (first row number, rows, row -> line of the file) per chunk of a file read a chunk at a time
IdChunks = Iterator[tuple[int, pd.DataFrame, Callable[[int], int]]]


def infer_separator(path: Path) -> str:
    """Tab for .tsv/.tab (also compressed, e.g. .tsv.gz), comma otherwise."""
    suffixes = [s for s in path.suffixes if s.lower() not in COMPRESSION_SUFFIXES]
    return "\t" if suffixes and suffixes[-1].lower() in {".tsv", ".tab"} else ","


def read_interactions(path: str | Path, **options: Any) -> pd.DataFrame:
    """Read one interaction file into columns user_id, item_id, rating, timestamp (and target if present):
    every chunk of `read_interaction_chunks(path, **options)` (its keywords: user_col, item_col, rating_col,
    timestamp_col, target_col, sep, encoding) joined into one frame.

    User and item columns must exist; rating, timestamp and target are used when the file has them.
    Ids come back as categories whose categories are the raw text of the file.
    Every problem a user can cause raises DataError with the file and the line or column.
    """
    chunks = list(read_interaction_chunks(path, **options))
    merged = {name: union_categoricals([chunk[name] for chunk in chunks], sort_categories=True) for name in (USER, ITEM)}
    for name in chunks[0].columns.drop([USER, ITEM]):
        merged[name] = np.concatenate([chunk[name].to_numpy() for chunk in chunks])
    return pd.DataFrame(merged)


def read_interaction_chunks(
    path: str | Path,
    *,
    user_col: str,
    item_col: str,
    rating_col: str | None = "rating",
    timestamp_col: str | None = "timestamp",
    target_col: str | None = "target",
    sep: str | None = None,
    encoding: str = "utf-8",
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[pd.DataFrame]:
    """`read_interactions` a chunk of `chunk_rows` rows at a time, with the same checks: each chunk's ids are
    categories of their raw text, a file without ratings rates every row 1, and one without timestamps
    numbers its rows in file order. The file and its header are checked before the first chunk is asked for."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; point data.path (or data.train_path/valid_path/test_path) at an existing file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; it needs a header line and one interaction per line")
    sep = sep or infer_separator(path)
    found = _header(path, sep, encoding)
    if len(found) == 1:
        raise DataError(
            f"{path}: only one column found ({quote(found[0])}) with separator {sep!r}; "
            "set data.sep to the file's separator (e.g. data.sep=';' or data.sep='\\t')"
        )
    for key, column in (("data.user_col", user_col), ("data.item_col", item_col)):
        if column not in found:
            raise DataError(f"{path}: no column {column!r}; columns found: {_column_list(found)}. Set {key} to the right one")
    optional = {RATING: rating_col, TIMESTAMP: timestamp_col, TARGET: target_col}
    columns = {USER: user_col, ITEM: item_col, **{name: column for name, column in optional.items() if column and column in found}}
    return _parsed_chunks(path, sep, encoding, columns, chunk_rows)


def _parsed_chunks(path: Path, sep: str, encoding: str, columns: dict[str, str], chunk_rows: int) -> Iterator[pd.DataFrame]:
    reader = _ChunkReader(path, columns)
    progress.stage(f"reading {path}")
    read_any = False
    for first_row, chunk, line_of_row in _chunks(path, sep, encoding, columns, chunk_rows):
        if not len(chunk):
            continue
        read_any = True
        parsed = reader.parse(chunk, first_row, line_of_row)
        frame = {USER: parsed[USER], ITEM: parsed[ITEM]}
        frame[RATING] = parsed.get(RATING, np.ones(len(chunk), dtype=np.float32))
        frame[TIMESTAMP] = parsed.get(TIMESTAMP, np.arange(first_row, first_row + len(chunk), dtype=np.float64))
        if TARGET in parsed:
            frame[TARGET] = parsed[TARGET]
        yield pd.DataFrame(frame)
    if not read_any:
        raise DataError(f"{path}: has a header but no rows; add interactions below the header")


def read_id_pairs(path: str | Path, *, user_col: str, item_col: str, key: str, columns_key: str, chunk_rows: int) -> IdChunks:
    """A file's user and item id columns as text, `chunk_rows` rows at a time: (first row, rows with columns
    user_id and item_id, row -> line).

    For files that name (user, item) pairs rather than interactions (recommend's `pairs=`). They get the
    checks interaction files get (field counts, encoding, compression), and memory follows a chunk, not
    the file. The file and its header are checked here, before the first chunk is asked for; `key` and
    `columns_key` are the settings that name the file and its columns, for the messages.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{key}={cut(str(path), 200)}: file not found; point {key} at a CSV file with columns {user_col!r} and {item_col!r}"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; it needs a header line and one (user, item) pair per line")
    sep = infer_separator(path)
    found = _header(path, sep, "utf-8")
    for which, column in (("user", user_col), ("item", item_col)):
        if column not in found:
            raise DataError(
                f"{path}: no column {column!r}; columns found: {_column_list(found)}. Set {columns_key}.{which} to the right one"
            )
    return _id_pairs(_chunks(path, sep, "utf-8", {USER: user_col, ITEM: item_col}, chunk_rows), user_col, item_col)


def _id_pairs(chunks: IdChunks, user_col: str, item_col: str) -> IdChunks:
    """Each chunk as user_id and item_id, whatever the file calls them and in whatever order they stand."""
    for first_row, chunk, line_of_row in chunks:
        yield first_row, pd.DataFrame({USER: chunk[user_col], ITEM: chunk[item_col]}), line_of_row


class _ChunkReader:
    """Checks and converts one chunk of rows at a time, vectorised, naming the file's line of the first
    bad row; remembers whether the file's first timestamp was a number or a date, for every later chunk."""

    def __init__(self, path: Path, columns: dict[str, str]) -> None:
        self.path = path
        self.columns = columns
        self.timestamp_kind: str | None = None

    def parse(self, chunk: pd.DataFrame, first_row: int, line_of_row: Callable[[int], int]) -> dict[str, pd.Categorical | np.ndarray]:
        self.first_row, self.line_of_row = first_row, line_of_row
        user_col, item_col = self.columns[USER], self.columns[ITEM]
        # Checks compare each distinct id once (its category), not every row.
        users, items = pd.Categorical(chunk[user_col]), pd.Categorical(chunk[item_col])
        header_again = _rows_with(users, user_col) & _rows_with(items, item_col)
        if header_again.any():
            raise DataError(f"{self.path}: line {self._line(_first(header_again))} repeats the header; remove it (were two files joined?)")
        for column, ids in ((user_col, users), (item_col, items)):
            empty = (ids.codes < 0) | _rows_with(ids, "")  # a short row leaves a missing cell
            if empty.any():
                raise DataError(
                    f"{self.path}: line {self._line(_first(empty))}: empty {column!r}; "
                    "every row needs a user and an item id (remove or fill it)"
                )
        parsed: dict[str, pd.Categorical | np.ndarray] = {USER: users, ITEM: items}
        if RATING in self.columns:
            parsed[RATING] = self._finite(chunk[self.columns[RATING]], np.float32)
        if TIMESTAMP in self.columns:
            parsed[TIMESTAMP] = self._timestamps(chunk[self.columns[TIMESTAMP]])
        if TARGET in self.columns:
            parsed[TARGET] = self._targets(chunk[self.columns[TARGET]])
        return parsed

    def _line(self, row: int) -> int:
        """The line (as an editor counts) where row `row` of the current chunk starts."""
        return self.line_of_row(self.first_row + row)

    def _finite(self, values: pd.Series, dtype: type = np.float64) -> np.ndarray:
        """Numbers that are finite in `dtype` (ratings are float32, where 1e39 is as infinite as 1e400)."""
        wide = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
        with np.errstate(over="ignore"):
            numbers = wide.astype(dtype)
        bad = ~np.isfinite(numbers)
        if bad.any():
            row = _first(bad)
            problem = (
                "not a number"
                if np.isnan(wide[row])
                else "not a finite number"
                if np.isinf(wide[row])
                else f"beyond the range of {np.dtype(dtype).name} (about ±{np.finfo(dtype).max:.1e})"
            )
            raise DataError(
                f"{self.path}: line {self._line(row)}: {values.name!r} is {quote(values.iloc[row])}, {problem}; fix or remove that row"
            )
        return numbers

    def _targets(self, values: pd.Series) -> np.ndarray:
        numbers = self._finite(values)
        outside = ~np.isin(numbers, (0, 1))
        if outside.any():
            row = _first(outside)
            raise DataError(f"{self.path}: line {self._line(row)}: {values.name!r} is {quote(values.iloc[row])}; targets must be 0 or 1")
        return numbers.astype(np.int8)

    def _timestamps(self, values: pd.Series) -> np.ndarray:
        """Numbers as they are; date strings (ISO and the like) as seconds since the epoch. The first
        row decides which of the two the column holds, so a stray cell is named, not the first row."""
        if self.timestamp_kind is None:
            first = pd.to_numeric(values.iloc[:1], errors="coerce").to_numpy(np.float64)
            self.timestamp_kind = "numbers" if pd.api.types.is_numeric_dtype(values) or not np.isnan(first).all() else "dates"
        if self.timestamp_kind == "numbers":
            return self._finite(values)
        parsed = pd.to_datetime(values, errors="coerce", utc=True)
        bad = parsed.isna().to_numpy()
        if bad.any():
            row = _first(bad)
            raise DataError(
                f"{self.path}: line {self._line(row)}: {values.name!r} is {quote(values.iloc[row])}, "
                "not a date (years 1-9999, written like the first row's, e.g. 2024-01-31 or "
                "2024-01-31T10:00:00); fix or remove that row"
            )
        # Whatever resolution pandas picked, microseconds hold every date it can parse without overflow.
        microseconds = parsed.dt.tz_convert(None).to_numpy().astype("datetime64[us]").astype(np.int64)
        return microseconds / 1e6


@contextmanager
def _checked_file(path: Path, sep: str, encoding: str) -> Iterator[tuple[FieldCheckedStream, str]]:
    """The file decompressed and field-counted as pandas reads it (csv_fields), with the encoding to give
    pandas; every read error inside the block becomes one DataError."""
    with _read_errors(path, encoding), get_handle(path, "rb", compression="infer", is_text=False) as handles:
        compressed = path.suffix if path.suffix.lower() in COMPRESSION_SUFFIXES else None
        stream = FieldCheckedStream(handles.handle, path, sep, encoding, compressed)
        yield stream, stream.parser_encoding


def _header(path: Path, sep: str, encoding: str) -> list[str]:
    with _checked_file(path, sep, encoding) as (stream, parser_encoding):
        return [str(column) for column in pd.read_csv(stream, sep=sep, encoding=parser_encoding, nrows=0).columns]


def _chunks(path: Path, sep: str, encoding: str, columns: dict[str, str], rows: int = CHUNK_ROWS) -> IdChunks:
    """(first row number, rows, row -> line) per chunk of `rows`; ids as text, nothing read as missing (an id `NA` is an id)."""
    text_columns = {columns[USER]: str, columns[ITEM]: str}
    with _checked_file(path, sep, encoding) as (stream, parser_encoding):
        with pd.read_csv(
            stream,
            sep=sep,
            encoding=parser_encoding,
            usecols=list(dict.fromkeys(columns.values())),
            dtype=text_columns,
            keep_default_na=False,
            skip_blank_lines=False,
            chunksize=rows,
        ) as reader:
            first_row = 0
            for chunk in reader:
                yield first_row, chunk, stream.line_of_row
                first_row += len(chunk)
                progress.advance(first_row)


@contextmanager
def _read_errors(path: Path, encoding: str) -> Iterator[None]:
    """pandas' and the decompressors' exceptions for a file that is not what it claims -> one-line DataError."""
    try:
        yield
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not {encoding} text (byte {error.object[error.start : error.start + 1]!r} "
            f"at offset {error.start}); re-save it as UTF-8 or set data.encoding (e.g. data.encoding=latin-1)"
        ) from error
    except ImportError as error:
        package = OPTIONAL_DECOMPRESSORS.get(path.suffix.lower(), getattr(error, "name", None) or "the missing package")
        raise DataError(
            f"{path}: reading {path.suffix} files needs the {package} package: pip install {package} (or decompress the file first)"
        ) from error
    except (EOFError, zlib.error, OSError, lzma.LZMAError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: cannot be decompressed or read ({cut(str(error))}); the archive may be corrupt or truncated") from error
    except pd.errors.EmptyDataError as error:
        raise DataError(f"{path}: no header line found; the first line must name the columns (e.g. userId,itemId)") from error
    except pd.errors.ParserError as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        raise DataError(f"{path}: {cut(detail)}; check data.sep and quoting") from error
    except ValueError as error:  # pandas reports unparseable dtypes, bad usecols and odd zip archives as ValueError
        raise DataError(f"{path}: {cut(str(error))}") from error


def read_item_titles(
    path: str | Path, *, item_col: str, title_col: str, sep: str | None = None, encoding: str = "utf-8", titles_required: bool = True
) -> pd.DataFrame:
    """Item metadata file -> columns item_id, title (raw text both); titles label recommendations and the projector.

    A file read for its item features need not have titles (`titles_required=False`): they are then empty.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; point data.items_path at a file with columns {item_col!r} and {title_col!r}, or set it to null"
        )
    sep = sep or infer_separator(path)
    found = _header(path, sep, encoding)
    has_titles = title_col in found
    for key, column in (("data.item_col", item_col), ("data.title_col", title_col)):
        if column not in found and (column == item_col or titles_required):
            raise DataError(f"{path}: no column {column!r}; columns found: {_column_list(found)}. Set {key} to the right one")
    columns = [item_col, title_col] if has_titles else [item_col]
    with _checked_file(path, sep, encoding) as (stream, parser_encoding):
        frame = pd.read_csv(
            stream, sep=sep, encoding=parser_encoding, usecols=columns, dtype=str, keep_default_na=False, skip_blank_lines=False
        )
        items = pd.DataFrame({ITEM: frame[item_col], "title": frame[title_col] if has_titles else ""})
        _refuse_conflicting_titles(path, items, title_col, stream.line_of_row)
    return items


def _refuse_conflicting_titles(path: Path, items: pd.DataFrame, title_col: str, line_of_row: Callable[[int], int]) -> None:
    """An item listed twice with different titles: either title would be a guess (the same title twice is fine)."""
    distinct = items.drop_duplicates()
    again = distinct[ITEM].duplicated().to_numpy()
    if not again.any():
        return
    row = distinct.index[_first(again)]
    item = items.at[row, ITEM]
    first = distinct.index[_first((distinct[ITEM] == item).to_numpy())]
    raise DataError(
        f"{path}: line {line_of_row(row)}: item {quote(item)} is listed again (first on line {line_of_row(first)}) "
        f"with another {title_col!r} ({quote(items.at[row, 'title'])}, before {quote(items.at[first, 'title'])}); keep one row per item"
    )


def read_feature_columns(
    path: str | Path,
    *,
    id_col: str,
    feature_cols: Sequence[str],
    feature_sep: str | None,
    sep: str | None = None,
    encoding: str = "utf-8",
    entity: str = "item",
) -> FeatureColumns:
    """An items or users file -> its ids and the named categorical columns, all as text (nothing read as
    missing: an empty cell is no feature); matched to the interactions' ids later, by exact text."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; point data.{entity}s_path at a file with columns "
            f"{', '.join(map(repr, [id_col, *feature_cols]))}, or set data.{entity}_features=[]"
        )
    sep = sep or infer_separator(path)
    found = _header(path, sep, encoding)
    for key, column in ((f"data.{entity}_col", id_col), *((f"data.{entity}_features", column) for column in feature_cols)):
        if column not in found:
            raise DataError(f"{path}: no column {column!r}; columns found: {_column_list(found)}. Set {key} to the right one")
    with _checked_file(path, sep, encoding) as (stream, parser_encoding):
        frame = pd.read_csv(
            stream,
            sep=sep,
            encoding=parser_encoding,
            usecols=list(dict.fromkeys([id_col, *feature_cols])),
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,  # keeps row numbers = line numbers - 2 for messages
        )
    return FeatureColumns(str(path), frame[id_col], frame[list(feature_cols)], sep=feature_sep, first_line=2)


def integer_ids_if_exact(ids: pd.Series) -> pd.Series:
    """Categorical raw ids -> int64 categories (sorted) when every id round-trips: str(int(s)) == s within
    int64; otherwise the raw text unchanged. `7` and `-3` qualify; `007`, `+7`, ` 7`, `7.0` keep all ids text."""
    text = ids.cat.categories
    if not len(text) or not np.asarray(text.str.fullmatch(CANONICAL_INT), dtype=bool).all():
        return ids
    numbers = pd.to_numeric(text)
    if numbers.dtype != np.int64 or not (pd.Index(numbers).astype(str) == text).all():
        return ids  # beyond int64
    return ids.cat.rename_categories(numbers).cat.reorder_categories(np.sort(numbers))


def _column_list(found: list[str]) -> str:
    """The header's cells as a message lists them: each quoted (`'Unnamed: 0', '\\n'`), so an empty or blank
    cell, a separator inside a name, or a newline pandas read inside quotes is seen for what it is."""
    return cut(", ".join(quote(column, 40) for column in found[:20]) + (", ..." if len(found) > 20 else ""), 2 * QUOTE_LIMIT)


def _rows_with(ids: pd.Categorical, value: str) -> np.ndarray:
    """Rows whose id is exactly `value`."""
    if value not in ids.categories:
        return np.zeros(len(ids), dtype=bool)
    return ids.codes == ids.categories.get_loc(value)


def _first(flags: np.ndarray) -> int:
    """Row of the first flagged entry."""
    return int(np.argmax(flags))


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
        sep: Annotated[str | None, TEXT] = None,
        encoding: Annotated[str, Encoding()] = "utf-8",
        user_col: str = "userId",
        item_col: str = "itemId",
        rating_col: str | None = "rating",
        timestamp_col: str | None = "timestamp",
        target_col: str | None = "target",
        min_user_interactions: Annotated[int, Range(0)] = 0,
        min_item_interactions: Annotated[int, Range(0)] = 0,
        items_path: str | None = None,
        title_col: str = "title",
        item_features: Annotated[Sequence[str], ListOf(TEXT, 0, "[genre,year]")] = (),
        users_path: Annotated[str | None, TEXT] = None,
        user_features: Annotated[Sequence[str], ListOf(TEXT, 0, "[age,gender,occupation]")] = (),
        feature_sep: Annotated[str | None, TEXT] = "|",
        on_overlap: Annotated[str, Choice(("drop", "error"))] = "drop",
        **split_and_batching,
    ) -> None:
        super().__init__(**split_and_batching)
        if (path is None) == (train_path is None):
            raise DataError("set either data.path (one file to split) or data.train_path and data.valid_path (pre-split files)")
        if train_path is not None and valid_path is None:
            raise DataError("data.train_path needs data.valid_path too (data.test_path is optional)")
        self.on_overlap = check_overlap_action(on_overlap)
        self.paths = {"train": train_path, "valid": valid_path, "test": test_path} if path is None else {"all": path}
        self.read_options = dict(
            user_col=user_col,
            item_col=item_col,
            rating_col=rating_col,
            timestamp_col=timestamp_col,
            target_col=target_col,
            sep=sep,
            encoding=encoding,
        )
        self.min_user_interactions = min_user_interactions
        self.min_item_interactions = min_item_interactions
        self.items_path = items_path
        self.title_col = title_col
        self.feature_files = {
            "item": (items_path, item_col, _feature_names("item", item_features, items_path)),
            "user": (users_path, user_col, _feature_names("user", user_features, users_path)),
        }
        if users_path and not user_features:
            log.warning("data.users_path is set but data.user_features is empty, so the users file is not read; name its columns there")
        self.feature_sep = feature_sep

    def load(self) -> LoadedInteractions:
        # Checked here, not in __init__: Hydra wraps an error raised while it instantiates the class.
        if self.read_options["sep"] is not None:
            separator_byte(self.read_options["sep"])
        _check_distinct_columns(**{key: value for key, value in self.read_options.items() if key.endswith("_col")})
        given = {name: path for name, path in self.paths.items() if path}
        _check_distinct_files(given)
        parts = {}
        for name, path in given.items():
            parts[name] = read_interactions(path, **self.read_options)
            log.info("read %d rows from %s", len(parts[name]), path)
        first = next(iter(parts))
        parts[first] = k_core(parts[first], self.min_user_interactions, self.min_item_interactions, given[first])
        frame = _combine(parts)
        for column in (USER, ITEM):
            frame[column] = integer_ids_if_exact(frame[column])
        source = ", ".join(f"{name}={path}" for name, path in given.items())
        items = pd.DataFrame({ITEM: pd.Series([], dtype=object), "title": []})
        if self.items_path:
            items = read_item_titles(
                self.items_path,
                item_col=self.read_options["item_col"],
                title_col=self.title_col,
                sep=self.read_options["sep"],
                encoding=self.read_options["encoding"],
                titles_required=not self.feature_files["item"][2],
            )
            items = _with_interaction_ids(items, frame[ITEM], self.items_path, self.read_options["item_col"])
        ratings_missing = next(filter(None, (self._ratings_missing(Path(path)) for path in given.values())), None)
        features = {
            f"{entity}_features": read_feature_columns(
                path,
                id_col=id_col,
                feature_cols=names,
                feature_sep=self.feature_sep,
                sep=self.read_options["sep"],
                encoding=self.read_options["encoding"],
                entity=entity,
            )
            for entity, (path, id_col, names) in self.feature_files.items()
            if names
        }
        return LoadedInteractions(frame, items, source=f"csv:{source}", ratings_missing=ratings_missing, **features)

    def load_chunks(self, chunk_rows: int) -> ChunkedInteractions:
        """The file, or the pre-split files one after the other (each row tagged with its file's part, as `load`
        tags it), read `chunk_rows` rows at a time and checked as `load` checks them; k-core filtering, as `load`
        applies it to the first file, is found in passes over that file (ChunkedKCore)."""
        if self.read_options["sep"] is not None:
            separator_byte(self.read_options["sep"])
        _check_distinct_columns(**{key: value for key, value in self.read_options.items() if key.endswith("_col")})
        given = {name: path for name, path in self.paths.items() if path}
        _check_distinct_files(given)
        for path in given.values():
            read_interaction_chunks(path, **self.read_options, chunk_rows=1)  # each file and its header, checked now

        first = next(iter(given))
        core = None
        if max(self.min_user_interactions, self.min_item_interactions) > 1:
            core = ChunkedKCore(
                lambda: read_interaction_chunks(given[first], **self.read_options, chunk_rows=chunk_rows),
                self.min_user_interactions,
                self.min_item_interactions,
                given[first],
                chunk_rows,
            )

        def chunks() -> Iterator[pd.DataFrame]:
            for name, path in given.items():
                file_chunks = read_interaction_chunks(path, **self.read_options, chunk_rows=chunk_rows)
                for chunk in core.filter(file_chunks) if core is not None and name == first else file_chunks:
                    yield chunk if name == "all" else chunk.assign(**{PART: np.int8(PART_CODES[name])})

        def items(item_ids: np.ndarray) -> pd.DataFrame:
            if not self.items_path:
                return pd.DataFrame({ITEM: pd.Series([], dtype=object), "title": []})
            titles = read_item_titles(
                self.items_path,
                item_col=self.read_options["item_col"],
                title_col=self.title_col,
                sep=self.read_options["sep"],
                encoding=self.read_options["encoding"],
                titles_required=True,
            )
            known = pd.Series(pd.Categorical(item_ids, categories=np.sort(item_ids)))
            return _with_interaction_ids(titles, known, self.items_path, self.read_options["item_col"])

        return ChunkedInteractions(
            chunks=chunks,
            source="csv:" + ", ".join(f"{name}={path}" for name, path in given.items()),
            ratings_missing=next(filter(None, (self._ratings_missing(Path(path)) for path in given.values())), None),
            index_ids=lambda distinct: np.asarray(integer_ids_if_exact(pd.Series(pd.Categorical(distinct, categories=distinct)))),
            items=items,
            given_parts="all" not in given,
        )

    def _ratings_missing(self, path: Path) -> str | None:
        """Why `path` gives no ratings (read_interactions then rates every row 1), or None when it does."""
        rating_col = self.read_options["rating_col"]
        if not rating_col:
            return "data.rating_col is null: set it to the column holding ratings"
        found = _header(path, self.read_options["sep"] or infer_separator(path), self.read_options["encoding"])
        if rating_col in found:
            return None
        columns = _column_list(found)
        return f"{path} has no rating column {rating_col!r} (columns: {columns}): set data.rating_col to the column holding ratings"


def _feature_names(entity: str, names: Sequence[str], path: str | None) -> tuple[str, ...]:
    """The feature columns of one side, each once; naming some without a file to read them from is a ConfigError."""
    if names and not path:
        raise ConfigError(
            f"data.{entity}_features={list(names)} needs data.{entity}s_path: a file with the {entity} ids in "
            f"data.{entity}_col and those columns (or set data.{entity}_features=[])"
        )
    return tuple(dict.fromkeys(names))


def _check_distinct_columns(**columns: str | None) -> None:
    """Two keys naming one column would read the same cells as two things (item ids that are the user ids)."""
    named = {key: column for key, column in columns.items() if column}
    keys = list(named)
    for position, key in enumerate(keys):
        other = next((later for later in keys[position + 1 :] if named[later] == named[key]), None)
        if other is not None:
            column = named[key]
            raise ConfigError(
                f"data.{key} and data.{other} both name the column {quote(column)}; each must name its own column "
                f"(the optional rating_col, timestamp_col and target_col can be null)"
            )


def _check_distinct_files(given: dict[str, str]) -> None:
    """Held-out files that are the train file (or each other), under any spelling or link, would evaluate
    the model on what it trained on."""
    names = list(given)
    for position, name in enumerate(names):
        for other in names[position + 1 :]:
            first, second = given[name], given[other]
            if os.path.exists(first) and os.path.exists(second) and os.path.samefile(first, second):
                raise ConfigError(
                    f"data.{other}_path and data.{name}_path are the same file ({cut(str(Path(first).resolve()), 2 * QUOTE_LIMIT)}); "
                    "held-out interactions need their own file (or set data.path alone to split one file)"
                )


def _combine(parts: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One frame; pre-split parts tagged in PART, their ids unified over the raw text, so `7` in train
    and `7` in test are one id and `07` another."""
    if len(parts) == 1:
        frame = next(iter(parts.values()))
        return frame.assign(**{column: frame[column].cat.remove_unused_categories() for column in (USER, ITEM)})
    frame = pd.concat(
        [part.drop(columns=[USER, ITEM]).assign(**{PART: np.int8(PART_CODES[name])}) for name, part in parts.items()], ignore_index=True
    )
    for column in (USER, ITEM):
        frame[column] = union_categoricals([part[column].cat.remove_unused_categories() for part in parts.values()], sort_categories=True)
    if TARGET in frame:  # a file without a target column holds positives only
        frame[TARGET] = frame[TARGET].fillna(1).astype(np.int8)
    return frame


def _with_interaction_ids(items: pd.DataFrame, item_ids: pd.Series, source: str, item_col: str) -> pd.DataFrame:
    """Items-file rows keyed like the interactions: an id matches only the same raw text, so with
    integer ids `7` matches item 7 and `007` matches nothing. A file none of whose ids matches is an error."""
    categories = item_ids.cat.categories
    position = pd.Index(categories.astype(str)).get_indexer(items[ITEM])
    known = position >= 0
    refuse_unmatched(source, items[ITEM].rename(item_col), known, np.asarray(categories), "item")
    if not pd.api.types.is_integer_dtype(categories.dtype):
        return items
    return pd.DataFrame({ITEM: categories[position[known]], "title": items["title"].to_numpy()[known]})
