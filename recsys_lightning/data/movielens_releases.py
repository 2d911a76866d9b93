"""The MovieLens releases after ML-100K (ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, ml-latest-small): what each
official GroupLens archive holds and how its files are read.

ml-1m and ml-10m are `::`-separated latin-1 `.dat` files without a header; the later releases are quoted
UTF-8 CSV files with a header. Ratings are parsed by pandas' C parser in chunks (no per-row Python; the
`.dat` files reach it through `DoubleColonAsTab`), so a release costs 28 bytes per rating once read (int64
user, int64 item, float32 rating, int64 timestamp) and 60-70 at the peak (chunks, their join and the
allocator's slack; measured on 5M and 12M synthetic rows): ~2 GB for ml-32m's 32M ratings. Ids are read as the files write them; titles,
genres and tags are small files read whole.
"""

from __future__ import annotations

import csv
import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from recsys_lightning.data.datamodule import LoadedInteractions
from recsys_lightning.data.features import FeatureColumns
from recsys_lightning.data.fetch import fetch_archive, one_fetch_at_a_time
from recsys_lightning.data.interactions import ITEM, RATING, TIMESTAMP, USER
from recsys_lightning.errors import DataError, cut, first_line, quote

log = logging.getLogger(__name__)

GROUPLENS_DATASETS = "https://files.grouplens.org/datasets/movielens/"
CHUNK_ROWS = 1 << 20  # ratings parsed at once: bounds the float64 cells held before the typed columns
CANONICAL_ID = r"0|[1-9][0-9]{0,14}"  # a movie id as an integer prints it, below WHOLE_LIMIT
WHOLE_LIMIT = 2**53  # ids and timestamps beyond this are not exact in the float64 they are parsed as
NO_GENRES = "(no genres listed)"  # what the CSV releases write for a movie without genres
# ml-1m's users.dat codes age as the first year of a range (its README); the labels are those ranges.
ML1M_AGES = {"1": "under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55", "56": "56+"}
CSV_HEADERS = {
    "ratings": ("userId", "movieId", "rating", "timestamp"),
    "movies": ("movieId", "title", "genres"),
    "tags": ("userId", "movieId", "tag", "timestamp"),
}
# What pandas raises on a file that is not the table it should be (see movielens.UNREADABLE).
UNREADABLE = (ValueError, KeyError, TypeError, OverflowError, pd.errors.ParserWarning)


@dataclass(frozen=True)
class ReleaseCounts:
    """What a genuine ratings file holds, as the release's README states it: ratings, and distinct users
    who rated (None where the README counts users without ratings too, as ml-10m's 71,567 does)."""

    ratings: int
    users: int | None


@dataclass(frozen=True)
class Release:
    """One official archive: `<name>.zip` on GroupLens unpacks to `folder/`, which holds the files read here.

    `archive_md5` is the digest GroupLens publishes beside each zip (`<name>.zip.md5`), None where it was not
    found; no sha256 of these archives was found from a reliable source, and none is made up here. `counts`
    None: checked by structure only.
    """

    name: str
    title: str
    folder: str
    url: str
    archive_md5: str | None
    counts: ReleaseCounts | None
    dat: bool  # `::`-separated latin-1 .dat files, no header (ml-1m, ml-10m); else CSV with a header
    has_users: bool = False  # users.dat with demographics (ml-1m only)
    has_tags: bool = True

    def file(self, table: str) -> str:
        return f"{table}.dat" if self.dat else f"{table}.csv"

    @property
    def item_features(self) -> tuple[str, ...]:
        return ("genre", "year", "tag") if self.has_tags else ("genre", "year")

    @property
    def user_features(self) -> tuple[str, ...]:
        return ("age", "gender", "occupation") if self.has_users else ()


# Counts from each release's README (files.grouplens.org/datasets/movielens/<name>-README.{txt,html}); MD5s as
# GroupLens publishes them, identical in several independent downloaders (ml-32m's and ml-latest-small's not
# found). No digest of a ratings file is known from a reliable source: counts are checked instead.
def _grouplens(name: str, title: str, folder: str, md5: str | None, counts: ReleaseCounts | None, **layout: bool) -> Release:
    return Release(name, title, folder, f"{GROUPLENS_DATASETS}{name}.zip", md5, counts, **layout)


RELEASES = {
    release.name: release
    for release in (
        _grouplens(
            "ml-1m",
            "MovieLens-1M",
            "ml-1m",
            "c4d9eecfca2ab87c1945afe126590906",
            ReleaseCounts(1_000_209, 6_040),
            dat=True,
            has_users=True,
            has_tags=False,
        ),
        _grouplens("ml-10m", "MovieLens-10M", "ml-10M100K", "ce571fd55effeba0271552578f2648bd", ReleaseCounts(10_000_054, None), dat=True),
        _grouplens("ml-20m", "MovieLens-20M", "ml-20m", "cd245b17a1ae2cc31bb14903e1204af3", ReleaseCounts(20_000_263, 138_493), dat=False),
        _grouplens("ml-25m", "MovieLens-25M", "ml-25m", "6b51fb2759a8657d3bfcbfc42b592ada", ReleaseCounts(25_000_095, 162_541), dat=False),
        _grouplens("ml-32m", "MovieLens-32M", "ml-32m", None, ReleaseCounts(32_000_204, 200_948), dat=False),
        # A development release that GroupLens changes over time (its README says so): structure only.
        _grouplens("ml-latest-small", "MovieLens latest-small", "ml-latest-small", None, None, dat=False),
    )
}


def resolve_release(
    data_dir: str | Path,
    release: Release,
    *,
    timeout: float = 10.0,
    download: bool = True,
    item_features: tuple[str, ...] = (),
    user_features: tuple[str, ...] = (),
) -> LoadedInteractions:
    """The release from `data_dir/<folder>`, fetched there first when its ratings file is missing.

    Tests pass a `Release` of their own (`dataclasses.replace` of one in RELEASES) whose counts, URL and
    MD5 fit the small files they write in its exact format. With `download=False` nothing is fetched or
    created (evaluate reads a run folder's recorded data_dir).
    """
    data_dir = Path(data_dir)
    dataset_dir = data_dir / release.folder
    source = "grouplens-local"
    if not (dataset_dir / release.file("ratings")).is_file():
        if not download:
            raise DataError(
                f"{cut(str(dataset_dir), 200)}: no {release.title} here; evaluate reads the run's data, it does not fetch it: "
                f"unzip {release.url} into {cut(str(data_dir), 200)} or fix data_dir in <run>/.hydra/config.yaml"
            )
        with one_fetch_at_a_time(data_dir, release.title, release.folder):
            if not (dataset_dir / release.file("ratings")).is_file():  # else fetched by another process while this one waited
                fetch_archive(release.url, release.archive_md5, data_dir, release.folder, release.title, timeout)
                source = "grouplens-download"
    loaded = read_release(dataset_dir, release, item_features, user_features, source)
    log.info("%s from %s (%s)", release.title, source, dataset_dir)
    return loaded


def read_release(
    dataset_dir: Path,
    release: Release,
    item_features: tuple[str, ...],
    user_features: tuple[str, ...],
    source: str = "grouplens-local",
) -> LoadedInteractions:
    """Ratings, titles and genres (and the named features) of an unpacked release, checked against its counts."""
    fix = f"replace {dataset_dir} with a fresh copy of {release.url}"
    reader = ReleaseReader(release, dataset_dir, fix)
    interactions = reader.ratings()
    _check_counts(interactions, release.counts, dataset_dir / release.file("ratings"), release, fix)
    movies = reader.movies()
    items = pd.DataFrame({ITEM: movies["item"], "title": movies["title"], "genres": movies["genre"]})
    loaded = LoadedInteractions(interactions, items, source)
    if item_features:
        features = movies[["genre", "year"]].copy()
        if "tag" in item_features:
            features["tag"] = movies["text_id"].map(reader.tags()).fillna("")
        columns = FeatureColumns(str(reader.path("movies")), movies["text_id"], features[list(item_features)], "|", reader.first_line)
        loaded = replace(loaded, item_features=columns)
    if user_features:
        loaded = replace(loaded, user_features=reader.users(user_features))
    return loaded


class DoubleColonAsTab(io.RawIOBase):
    """A binary file with every `::` read as a tab, for pandas' C parser (which takes one-byte separators).

    A run of colons at the end of a read is held back until the next one, so `::` split across two reads is
    still one separator; the bytes come out as one whole-file `replace(b"::", b"\\t")` would give them.
    """

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self._held = b""  # a run of colons that may start a `::` with the next read's bytes
        self._out = b""  # translated bytes beyond what the last buffer took

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001 (a writable buffer, as io.RawIOBase takes)
        view = memoryview(buffer).cast("B")
        while not self._out:
            chunk = self._raw.read(max(len(view), 1))
            data = self._held + chunk
            if not chunk:  # end of file: nothing more to join with
                self._held, self._out = b"", data.replace(b"::", b"\t")
                break
            kept = data.rstrip(b":")
            self._held, self._out = data[len(kept) :], kept.replace(b"::", b"\t")
        size = min(len(view), len(self._out))
        view[:size] = self._out[:size]
        self._out = self._out[size:]
        return size


class ReleaseReader:
    """Reads one unpacked release's tables; every failure is one DataError naming the file and line."""

    def __init__(self, release: Release, dataset_dir: Path, fix: str) -> None:
        self.release = release
        self.dataset_dir = dataset_dir
        self.fix = fix
        self.first_line = 1 if release.dat else 2  # the file line of data row 0

    def path(self, table: str) -> Path:
        path = self.dataset_dir / self.release.file(table)
        if not path.is_file():
            raise DataError(f"{path}: not found; {self.release.title} has it: {self.fix}")
        return path

    def ratings(self) -> pd.DataFrame:
        """(int64 user, int64 item, float32 rating, int64 timestamp), each chunk checked before the integer
        cast, which would silently truncate a fraction and fail on the NaN that a line cut short leaves."""
        path = self.path("ratings")
        parts = []
        with self._refusing(path):
            try:
                with open(path, "rb") as raw:
                    for start, chunk in enumerate(self._table(raw, "ratings", dtype="float64", chunksize=CHUNK_ROWS)):
                        parts.append(self._typed_ratings(chunk.to_numpy(), path, start * CHUNK_ROWS))
            except ValueError as error:
                if isinstance(error, pd.errors.ParserError):
                    raise  # its message names the line
                raise self._unreadable(path, f"line {self._first_non_number(path):,}: {first_line(error)}") from error
        if not parts:
            raise self._unreadable(path, "it holds no ratings")
        return pd.concat(parts, ignore_index=True)

    def movies(self) -> pd.DataFrame:
        """One row per movies-file line: text_id (as written), item (int64), title, genre ("|"-joined), year."""
        path = self.path("movies")
        with open(path, "rb") as raw, self._refusing(path):
            movies = self._table(raw, "movies", dtype=str, keep_default_na=False)
        text_id = movies["movieId"]
        bad = (~text_id.str.fullmatch(CANONICAL_ID) | (movies["title"] == "")).to_numpy()  # ids as the ratings file's integers
        if bad.any():
            row = int(np.argmax(bad))
            raise self._unreadable(
                path, f"line {row + self.first_line}: movie id {quote(text_id.iloc[row])} is not a whole number, or no title"
            )
        item = pd.to_numeric(text_id)
        genre = movies["genres"].where(movies["genres"] != NO_GENRES, "")
        year = movies["title"].str.extract(r"\((\d{4})\)\s*$", expand=False).fillna("")  # "Toy Story (1995)"; a few have none
        return pd.DataFrame({"text_id": text_id, "item": item.astype("int64"), "title": movies["title"], "genre": genre, "year": year})

    def tags(self) -> pd.Series:
        """Movie id text -> its distinct tags, lower-cased and "|"-joined ("|" inside a tag becomes "/")."""
        path = self.path("tags")
        with open(path, "rb") as raw, self._refusing(path):
            tags = self._table(raw, "tags", dtype=str, keep_default_na=False)
        tag = tags["tag"].str.strip().str.lower().str.replace("|", "/", regex=False)
        pairs = pd.DataFrame({"movieId": tags["movieId"], "tag": tag})
        pairs = pairs[pairs["tag"] != ""].drop_duplicates()
        return pairs.groupby("movieId", sort=False)["tag"].agg("|".join)  # one join per movie, not per tag

    def users(self, names: tuple[str, ...]) -> FeatureColumns:
        """ml-1m's users.dat -> the named features by user id; age as its README's range ("25-34")."""
        path = self.path("users")
        with open(path, "rb") as raw, self._refusing(path):
            users = pd.read_csv(
                io.BufferedReader(DoubleColonAsTab(raw)),
                sep="\t",
                header=None,
                names=[USER, "gender", "age", "occupation", "zip_code"],
                dtype=str,
                keep_default_na=False,
                index_col=False,
                encoding="latin-1",
                quoting=csv.QUOTE_NONE,
            )
        empty = (users[[USER, *names]] == "").any(axis=1).to_numpy()  # a line cut short reads as empty cells
        if empty.any():
            raise self._unreadable(path, f"line {int(np.argmax(empty)) + 1}: a cell is empty or missing")
        features = users[list(names)].copy()
        if "age" in names:
            features["age"] = users["age"].map(ML1M_AGES)
            unknown = features["age"].isna().to_numpy()
            if unknown.any():
                row = int(np.argmax(unknown))
                codes = ", ".join(ML1M_AGES)
                raise self._unreadable(path, f"line {row + 1}: age {quote(users['age'].iloc[row])} is not one of its codes ({codes})")
        return FeatureColumns(str(path), users[USER], features, sep=None, first_line=1)

    def _table(self, raw: BinaryIO, table: str, **read_csv_args):
        """A table's columns by their CSV names; `.dat` files get the same names, having no header."""
        names = list(CSV_HEADERS[table])
        if self.release.dat:
            source = io.BufferedReader(DoubleColonAsTab(raw))
            common = dict(sep="\t", header=None, names=names, encoding="latin-1", quoting=csv.QUOTE_NONE)
        else:
            header = raw.readline(1024).decode("utf-8", "replace").strip()
            if header != ",".join(names):
                raise self._unreadable(raw.name, f"line 1: the header is {quote(header)}, not {','.join(names)}")
            raw.seek(0)  # pandas reads the header again, so the line numbers in its errors are the file's
            source, common = raw, dict(sep=",", header=0, names=names, encoding="utf-8")
        return pd.read_csv(source, index_col=False, skip_blank_lines=False, **common, **read_csv_args)

    def _first_non_number(self, path: Path) -> int:
        """The file line of the first ratings cell that is not a number: pandas' float parse does not say
        which it was, so the file is read again as text, chunk by chunk (only on the way to an error)."""
        with open(path, "rb") as raw:
            for start, chunk in enumerate(self._table(raw, "ratings", dtype=str, keep_default_na=False, chunksize=CHUNK_ROWS)):
                numbers = chunk.apply(pd.to_numeric, errors="coerce")
                bad = (numbers.isna() & (chunk != "")).any(axis=1).to_numpy()
                if bad.any():
                    return start * CHUNK_ROWS + int(np.argmax(bad)) + self.first_line
        return self.first_line

    def _typed_ratings(self, values: np.ndarray, path: Path, first_row: int) -> pd.DataFrame:
        whole = values[:, [0, 1, 3]]
        valid = np.isfinite(values).all(axis=1) & ((np.abs(whole) < WHOLE_LIMIT) & (whole == np.floor(whole))).all(axis=1)
        if not valid.all():
            line = first_row + int(np.flatnonzero(~valid)[0]) + self.first_line
            raise self._unreadable(path, f"line {line:,}: a cell is empty or not a number, or an id or timestamp is not whole")
        return pd.DataFrame(
            {
                USER: whole[:, 0].astype("int64"),
                ITEM: whole[:, 1].astype("int64"),
                RATING: values[:, 2].astype("float32"),
                TIMESTAMP: whole[:, 2].astype("int64"),
            }
        )

    @contextmanager
    def _refusing(self, path: Path) -> Iterator[None]:
        """Any parse failure becomes one line that names the file and says what to do."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", pd.errors.ParserWarning)
                yield
        except UNREADABLE as error:
            if isinstance(error, pd.errors.ParserWarning):
                detail = "a row has more cells than the format"
            elif isinstance(error, KeyError):
                detail = f"no {error.args[0]} column"
            else:
                detail = first_line(error)
            raise self._unreadable(path, detail) from error

    def _unreadable(self, path: Path | str, detail: str) -> DataError:
        return DataError(f"{path}: cannot be read as {self.release.title} ({detail}); {self.fix}")


def _check_counts(interactions: pd.DataFrame, counts: ReleaseCounts | None, path: Path, release: Release, fix: str) -> None:
    """The README's counts, so a cut or wrong file says what is wrong in words."""
    if counts is None:
        return
    found = (len(interactions), interactions[USER].nunique())
    if found[0] != counts.ratings or (counts.users is not None and found[1] != counts.users):
        users = f", {counts.users:,} users" if counts.users is not None else ""
        raise DataError(
            f"{path}: found {found[0]:,} ratings by {found[1]:,} users; {release.title} has {counts.ratings:,} ratings{users}; {fix}"
        )
