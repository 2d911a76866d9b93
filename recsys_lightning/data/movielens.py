"""MovieLens: find it on disk, else fetch it (`fetch.py`), and check it is the real thing before use.

ML-100K (the default variant) is read here: files already in the data directory (GroupLens or RecBole
layout) come first; without them it is fetched into it (the GroupLens zip, else the RecBole wheel on
PyPI), then read and verified like them. The later releases are read by `movielens_releases.py`.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd

from recsys_lightning.data.datamodule import InteractionDataModule, LoadedInteractions
from recsys_lightning.data.features import FeatureColumns
from recsys_lightning.data.fetch import (
    DATASET_DIR,
    GROUPLENS_URL,
    RECBOLE_WHEEL,
    RECBOLE_WHEEL_SHA256,
    PipDownload,
    fetch_ml100k,
    one_fetch_at_a_time,
)
from recsys_lightning.data.interactions import ITEM, RATING, TIMESTAMP, USER
from recsys_lightning.data.movielens_releases import RELEASES, resolve_release
from recsys_lightning.errors import ConfigError, DataError, cut, first_line, quote
from recsys_lightning.ranges import POSITIVE, TEXT, Choice, ListOf

log = logging.getLogger(__name__)

GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
ITEM_FEATURES = ("genre", "year")  # genre: the 19 genre flags, several per movie; year: of release
USER_FEATURES = ("age", "gender", "occupation")  # age by decade: "age=20s" for 20-29
USER_COLUMNS = (USER, "age", "gender", "occupation", "zip_code")  # u.user's cells, in order
VARIANTS = ("ml-100k", *RELEASES)


@dataclass(frozen=True)
class ExpectedContent:
    """What a genuine copy holds. The counts give a readable message for a wrong dataset; the digest
    catches a truncated or edited copy that keeps them (see `ratings_sha256`)."""

    interactions: int
    users: int
    items: int
    ratings_sha256: str


# The digest of the 100,000 ratings in the recbole==1.2.1 wheel's ml-100k.inter (file sha256
# 4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff), the rows of GroupLens' u.data in
# another layout; hashing sorted values instead of bytes lets both layouts share one digest.
ML100K = ExpectedContent(
    interactions=100_000,
    users=943,
    items=1_682,
    ratings_sha256="d8864484853ca1053766a43f96887c517412b7d2c9e2495c7d01fb44b890e650",
)

RATING_COLUMNS = (USER, ITEM, RATING, TIMESTAMP)
# What pandas raises on a file that is not the table it should be: ParserError, EmptyDataError and
# UnicodeDecodeError are ValueErrors; a missing column is a KeyError; casts add TypeError and OverflowError.
# ParserWarning (a row longer than the header, whose extra cells index_col=False drops) is made an error.
UNREADABLE = (ValueError, KeyError, TypeError, OverflowError, pd.errors.ParserWarning)
WHOLE_LIMIT = 2**53  # ids and timestamps beyond this are not exact in the float64 they are parsed as


def resolve_movielens(
    data_dir: str | Path,
    *,
    url: str = GROUPLENS_URL,
    wheel: str = RECBOLE_WHEEL,
    wheel_sha256: str = RECBOLE_WHEEL_SHA256,
    timeout: float = 10.0,
    expected: ExpectedContent = ML100K,
    pip_download: PipDownload | None = None,
    download: bool = True,
    item_features: Sequence[str] = (),
    user_features: Sequence[str] = (),
) -> LoadedInteractions:
    """Return ML-100K from the first source that has it, verified against `expected`, with the named
    features (of ITEM_FEATURES and USER_FEATURES); the users file is only read when some are named.

    With `download=False` only the local copy is read and nothing is created on disk: evaluate takes
    `data_dir` from a run folder's recorded config, an untrusted file that must not make it write.
    """
    data_dir = Path(data_dir)
    dataset_dir = data_dir / DATASET_DIR
    features = {"item_features": tuple(item_features), "user_features": tuple(user_features)}
    loaded = _read_local(dataset_dir, expected, **features)
    if loaded is None and not download:
        raise DataError(
            f"{cut(str(dataset_dir), 200)}: no MovieLens-100K here; evaluate reads the run's data, it does not fetch it: run training "
            "once (which fetches it) or fix data_dir in <run>/.hydra/config.yaml"
        )
    if loaded is None:
        with one_fetch_at_a_time(data_dir, "MovieLens-100K", DATASET_DIR):
            loaded = _read_local(dataset_dir, expected, **features)  # fetched by another process while this one waited
            if loaded is None:
                source = fetch_ml100k(data_dir, url, wheel, wheel_sha256, timeout, pip_download)
                loaded = _read_local(dataset_dir, expected, **features)
                if loaded is None:
                    raise DataError(f"{dataset_dir}: the downloaded archive held no ML-100K files; delete the folder and retry")
                loaded = replace(loaded, source=source)
    log.info("MovieLens-100K from %s (%s)", loaded.source, dataset_dir)
    return loaded


def ratings_sha256(interactions: pd.DataFrame) -> str:
    """sha256 of the (user, item, rating, timestamp) rows in sorted order, each column at a fixed width.

    It depends on the ratings only, not on the file's layout, order or number formatting, so the
    GroupLens u.data and RecBole's ml-100k.inter of the same data give the same digest.
    """
    order = np.lexsort([interactions[column].to_numpy() for column in reversed(RATING_COLUMNS)])
    digest = hashlib.sha256()
    for column, dtype in zip(RATING_COLUMNS, ("<i8", "<i8", "<f8", "<i8")):
        digest.update(interactions[column].to_numpy()[order].astype(dtype).tobytes())
    return digest.hexdigest()


def _read_local(
    dataset_dir: Path, expected: ExpectedContent, item_features: tuple[str, ...], user_features: tuple[str, ...]
) -> LoadedInteractions | None:
    grouplens = dataset_dir / "u.data", dataset_dir / "u.item"
    recbole = dataset_dir / "ml-100k.inter", dataset_dir / "ml-100k.item"
    if all(path.is_file() for path in grouplens):
        interactions, items, item_columns = _read_grouplens(*grouplens)
        source, (ratings_path, items_path), users_path = "grouplens-local", grouplens, dataset_dir / "u.user"
    elif all(path.is_file() for path in recbole):
        interactions, items, item_columns = _read_recbole(*recbole)
        source, (ratings_path, items_path), users_path = "recbole-local", recbole, dataset_dir / "ml-100k.user"
    else:
        return None
    loaded = LoadedInteractions(interactions, items, source)
    _verify(loaded, expected, ratings_path, items_path)
    if item_features:
        loaded = replace(loaded, item_features=replace(item_columns, values=item_columns.values[list(item_features)]))
    if user_features:
        loaded = replace(loaded, user_features=_read_users(users_path, user_features, expected))
    return loaded


def _read_grouplens(ratings_path: Path, items_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, FeatureColumns]:
    interactions = _read_ratings(ratings_path, header=None, names=list(RATING_COLUMNS))
    with _unreadable_as_data_error(items_path):
        # Integer genre flags make a line cut short (missing flags) a parse error instead of NaN flags.
        items = pd.read_csv(
            items_path,
            sep="|",
            header=None,
            encoding="latin-1",
            index_col=False,
            names=[ITEM, "title", "release_date", "video_release_date", "imdb_url", *GENRES],
            dtype={ITEM: "int64", **dict.fromkeys(GENRES, "int8")},
        )
    flags = items[list(GENRES)].to_numpy(bool)
    genres = ["|".join(g for g, on in zip(GENRES, row) if on) for row in flags]  # 1,682 rows, once per load
    year = items["release_date"].fillna("").str.extract(r"(\d{4})$", expand=False).fillna("")  # 01-Jan-1995; one is empty
    features = pd.DataFrame({"genre": genres, "year": year})
    item_columns = FeatureColumns(str(items_path), items[ITEM].astype(str), features, sep="|", first_line=1)
    return interactions, pd.DataFrame({ITEM: items[ITEM], "title": items["title"], "genres": genres}), item_columns


def _read_recbole(ratings_path: Path, items_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, FeatureColumns]:
    """RecBole atomic files name columns `name:type`; titles carry no year, so it is added back."""
    interactions = _read_ratings(ratings_path, header=0)
    with _unreadable_as_data_error(items_path):
        items = pd.read_csv(items_path, sep="\t", dtype=str, keep_default_na=False, index_col=False)
        items.columns = [str(c).split(":")[0] for c in items.columns]
        item_ids = items[ITEM].astype("int64")
        title = items["movie_title"].where(items["release_year"] == "", items["movie_title"] + " (" + items["release_year"] + ")")
        genres = items["class"].str.split().str.join("|")
    # A year as the GroupLens reader keeps it, four digits: RecBole's release_year holds "unkonwn" for the
    # unknown movie and "V" (a video release) for one whose year stayed in its title, "... (1995)".
    in_title = items["movie_title"].str.extract(r"\((\d{4})\)$", expand=False).fillna("")
    year = items["release_year"].where(items["release_year"].str.fullmatch(r"\d{4}"), in_title)
    features = pd.DataFrame({"genre": genres, "year": year})
    item_columns = FeatureColumns(str(items_path), items[ITEM], features, sep="|", first_line=2)
    return interactions, pd.DataFrame({ITEM: item_ids, "title": title, "genres": genres}), item_columns


def _read_users(path: Path, names: tuple[str, ...], expected: ExpectedContent) -> FeatureColumns:
    """u.user (`|`, no header) or RecBole's ml-100k.user (tab, `name:type` header) -> the named features
    (of USER_FEATURES, age as its decade) by raw user id. Checked by parsing and by its count of users,
    like the item file."""
    if not path.is_file():
        raise DataError(
            f"{path}: not found; user features need the users file of MovieLens-100K: delete {path.parent} to fetch a fresh copy"
        )
    grouplens = path.name == "u.user"
    first_line = 1 if grouplens else 2
    with _unreadable_as_data_error(path):
        if grouplens:
            users = pd.read_csv(
                path, sep="|", header=None, names=list(USER_COLUMNS), encoding="latin-1", dtype=str, keep_default_na=False, index_col=False
            )
        else:
            users = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, index_col=False)
            users.columns = [str(c).split(":")[0] for c in users.columns]
    missing = [column for column in (USER, *names) if column not in users.columns]
    if missing:
        raise _unreadable(path, f"no {', '.join(missing)} column")
    empty = (users[[USER, *names]].fillna("") == "").any(axis=1).to_numpy()  # a line cut short reads as empty cells
    if empty.any():
        raise _unreadable(path, f"line {int(np.argmax(empty)) + first_line}: a cell is empty or missing")
    ids = users[USER]
    if len(ids) != expected.users or ids.nunique() != expected.users:
        raise DataError(
            f"{path}: lists {len(ids):,} rows with {ids.nunique():,} distinct user ids; ML-100K has "
            f"{expected.users:,}; delete {path.parent} to fetch a fresh copy"
        )
    features = users[list(names)].copy()
    if "age" in names:
        ages = pd.to_numeric(users["age"], errors="coerce").to_numpy(np.float64)
        bad = ~((ages >= 0) & (ages < 200) & (ages == np.floor(ages)))  # NaN fails every comparison
        if bad.any():
            row = int(np.argmax(bad))
            raise _unreadable(path, f"line {row + first_line}: age {quote(users['age'].iloc[row])} is not a whole number of years")
        features["age"] = pd.Series(ages // 10 * 10, index=users.index).astype(np.int64).astype(str) + "s"
    return FeatureColumns(str(path), ids, features, sep=None, first_line=first_line)


def _read_ratings(path: Path, **read_csv_args) -> pd.DataFrame:
    """Ratings as (int64 user, int64 item, float32 rating, int64 timestamp) rows.

    Cells are parsed as float64 first and checked before the integer cast, which would silently
    truncate a fraction and fail on the NaN that a line cut short leaves.
    """
    with _unreadable_as_data_error(path):
        frame = pd.read_csv(path, sep="\t", dtype="float64", index_col=False, **read_csv_args)
    frame.columns = [str(c).split(":")[0] for c in frame.columns]
    missing = [column for column in RATING_COLUMNS if column not in frame.columns]
    if missing:
        raise _unreadable(path, f"no {', '.join(missing)} column")
    values = frame[list(RATING_COLUMNS)].to_numpy()
    whole = values[:, [0, 1, 3]]
    valid = np.isfinite(values).all(axis=1) & ((np.abs(whole) < WHOLE_LIMIT) & (whole == np.floor(whole))).all(axis=1)
    if not valid.all():
        row = int(np.flatnonzero(~valid)[0]) + 1
        raise _unreadable(path, f"data row {row:,}: a cell is empty or not finite, or an id or timestamp is not whole")
    return pd.DataFrame(
        {
            USER: whole[:, 0].astype("int64"),
            ITEM: whole[:, 1].astype("int64"),
            RATING: values[:, 2].astype("float32"),
            TIMESTAMP: whole[:, 2].astype("int64"),
        }
    )


@contextmanager
def _unreadable_as_data_error(path: Path) -> Iterator[None]:
    """Any parse failure of a local MovieLens file becomes one line that says what to do."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            yield
    except UNREADABLE as error:
        if isinstance(error, KeyError):
            detail = f"no {error.args[0]} column"
        elif isinstance(error, pd.errors.ParserWarning):
            detail = "a row has more cells than the header"
        else:
            detail = first_line(error)
        raise _unreadable(path, detail) from error


def _unreadable(path: Path, detail: str) -> DataError:
    return DataError(f"{path}: cannot be read as MovieLens-100K ({detail}); delete {path.parent} to fetch a fresh copy")


def _verify(loaded: LoadedInteractions, expected: ExpectedContent, ratings_path: Path, items_path: Path) -> None:
    """Counts first (they say what is wrong in words), then the ratings digest.

    The item file only supplies titles and genres, never a rating, so it is checked by its count
    and by parsing; the digest is what guards the numbers that training and metrics see.
    """
    interactions, folder = loaded.interactions, ratings_path.parent
    found = (len(interactions), interactions[USER].nunique(), interactions[ITEM].nunique())
    if found != (expected.interactions, expected.users, expected.items):
        raise DataError(
            f"{folder}: found {found[0]:,} interactions, {found[1]:,} users, {found[2]:,} items; "
            f"ML-100K has {expected.interactions:,}, {expected.users:,}, {expected.items:,}; delete {folder} to fetch a fresh copy"
        )
    listed = loaded.items[ITEM]
    if len(listed) != expected.items or listed.nunique() != expected.items:
        raise DataError(
            f"{items_path}: lists {len(listed):,} rows with {listed.nunique():,} distinct item ids; ML-100K has "
            f"{expected.items:,}; delete {folder} to fetch a fresh copy"
        )
    digest = ratings_sha256(interactions)
    if digest != expected.ratings_sha256:
        raise DataError(
            f"{ratings_path}: does not match MovieLens-100K (sha256 of its sorted ratings {digest[:16]}..., "
            f"expected {expected.ratings_sha256[:16]}...); delete {folder} to fetch a fresh copy"
        )


class MovieLensDataModule(InteractionDataModule):
    """ML-100K out of the box (see `resolve_movielens` for where it comes from); `variant` picks another
    release (`movielens_releases.RELEASES`). The URL and wheel keys are ML-100K's."""

    def __init__(
        self,
        data_dir: str,
        variant: Annotated[str, Choice(VARIANTS)] = "ml-100k",
        grouplens_url: str = GROUPLENS_URL,
        recbole_wheel: str = RECBOLE_WHEEL,
        recbole_wheel_sha256: str = RECBOLE_WHEEL_SHA256,
        download_timeout: Annotated[float, POSITIVE] = 10.0,
        download: bool = True,
        item_features: Annotated[Sequence[str], ListOf(TEXT, 0, "[genre,year,tag]")] = (),
        user_features: Annotated[Sequence[str], ListOf(TEXT, 0, "[age,gender,occupation]")] = (),
        **split_and_batching,
    ) -> None:
        super().__init__(**split_and_batching)
        release = RELEASES.get(variant)
        title = release.title if release else "MovieLens-100K"
        self.item_features = _known_features(
            "data.item_features", item_features, release.item_features if release else ITEM_FEATURES, title
        )
        self.user_features = _known_features(
            "data.user_features", user_features, release.user_features if release else USER_FEATURES, title
        )
        self.variant = variant
        self.data_dir = data_dir
        self.grouplens_url = grouplens_url
        self.recbole_wheel = recbole_wheel
        self.recbole_wheel_sha256 = recbole_wheel_sha256
        self.download_timeout = download_timeout
        self.download = download

    def load(self) -> LoadedInteractions:
        if self.variant in RELEASES:
            return resolve_release(
                self.data_dir,
                RELEASES[self.variant],
                timeout=self.download_timeout,
                download=self.download,
                item_features=self.item_features,
                user_features=self.user_features,
            )
        return resolve_movielens(
            self.data_dir,
            url=self.grouplens_url,
            wheel=self.recbole_wheel,
            wheel_sha256=self.recbole_wheel_sha256,
            timeout=self.download_timeout,
            download=self.download,
            item_features=self.item_features,
            user_features=self.user_features,
        )


def _known_features(key: str, names: Sequence[str], available: tuple[str, ...], title: str) -> tuple[str, ...]:
    """Checked before any file is read, so a typo costs nothing; a name given twice counts once."""
    unknown = [name for name in names if name not in available]
    if unknown:
        has = ", ".join(available) or "none (set it to [])"
        raise ConfigError(f"{key}: {quote(unknown[0])} is not a {title} feature; available: {has}")
    return tuple(dict.fromkeys(names))
