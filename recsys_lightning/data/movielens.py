"""MovieLens-100K: find it on disk, else download it, and check it is the real thing before use.

Sources are tried in order: files already in the data directory (GroupLens or RecBole layout), the
official GroupLens zip, then the copy of ML-100K inside the `recbole==1.2.1` wheel on PyPI, which is
reachable from networks that only reach a package index. That wheel is only unzipped, never installed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
from tqdm import tqdm

from recsys_lightning.data.datamodule import InteractionDataModule, LoadedInteractions
from recsys_lightning.data.interactions import ITEM, RATING, TIMESTAMP, USER
from recsys_lightning.errors import DataError

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_DATASET_PREFIX = "recbole/dataset_example/ml-100k/"
DATASET_DIR = "ml-100k"

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


@dataclass(frozen=True)
class ExpectedCounts:
    interactions: int
    users: int
    items: int


ML100K_COUNTS = ExpectedCounts(interactions=100_000, users=943, items=1_682)

PipDownload = Callable[[str, Path], None]


def resolve_movielens(
    data_dir: str | Path,
    *,
    url: str = GROUPLENS_URL,
    wheel: str = RECBOLE_WHEEL,
    wheel_sha256: str = RECBOLE_WHEEL_SHA256,
    timeout: float = 10.0,
    expected: ExpectedCounts = ML100K_COUNTS,
    pip_download: PipDownload | None = None,
) -> LoadedInteractions:
    """Return ML-100K from the first source that has it, verified against `expected`."""
    data_dir = Path(data_dir)
    dataset_dir = data_dir / DATASET_DIR
    loaded = _read_local(dataset_dir)
    if loaded is None:
        try:
            _download_grouplens_zip(url, data_dir, timeout)
            source = "grouplens-download"
        except (OSError, zipfile.BadZipFile) as error:
            log.warning("GroupLens unreachable (%s); taking ML-100K from the PyPI wheel %s", error, wheel)
            _extract_from_wheel(wheel, wheel_sha256, data_dir, pip_download or _pip_download)
            source = "pypi-recbole-wheel"
        loaded = _read_local(dataset_dir)
        if loaded is None:
            raise DataError(f"{dataset_dir}: the downloaded archive held no ML-100K files; delete the folder and retry")
        loaded = LoadedInteractions(loaded.interactions, loaded.items, source)
    _verify(loaded.interactions, expected, dataset_dir)
    log.info("MovieLens-100K from %s (%s)", loaded.source, dataset_dir)
    return loaded


def _read_local(dataset_dir: Path) -> LoadedInteractions | None:
    if (dataset_dir / "u.data").is_file() and (dataset_dir / "u.item").is_file():
        return LoadedInteractions(*_read_grouplens(dataset_dir), source="grouplens-local")
    if (dataset_dir / "ml-100k.inter").is_file() and (dataset_dir / "ml-100k.item").is_file():
        return LoadedInteractions(*_read_recbole(dataset_dir), source="recbole-local")
    return None


def _read_grouplens(dataset_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    interactions = _read_table(
        dataset_dir / "u.data", sep="\t", header=None, names=[USER, ITEM, RATING, TIMESTAMP],
        dtype={USER: "int64", ITEM: "int64", RATING: "float32", TIMESTAMP: "int64"},
    )  # fmt: skip
    items = _read_table(
        dataset_dir / "u.item", sep="|", header=None, encoding="latin-1",
        names=[ITEM, "title", "release_date", "video_release_date", "imdb_url", *GENRES],
    )  # fmt: skip
    flags = items[list(GENRES)].to_numpy(bool)
    genres = ["|".join(g for g, on in zip(GENRES, row) if on) for row in flags]  # 1,682 rows, once per load
    return interactions, pd.DataFrame({ITEM: items[ITEM].astype("int64"), "title": items["title"], "genres": genres})


def _read_recbole(dataset_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RecBole atomic files name columns `name:type`; titles carry no year, so it is added back."""
    interactions = _read_table(dataset_dir / "ml-100k.inter", sep="\t")
    interactions.columns = [c.split(":")[0] for c in interactions.columns]
    interactions = interactions[[USER, ITEM, RATING, TIMESTAMP]].astype(
        {USER: "int64", ITEM: "int64", RATING: "float32", TIMESTAMP: "int64"}
    )
    items = _read_table(dataset_dir / "ml-100k.item", sep="\t", dtype=str, keep_default_na=False)
    items.columns = [c.split(":")[0] for c in items.columns]
    title = items["movie_title"].where(items["release_year"] == "", items["movie_title"] + " (" + items["release_year"] + ")")
    genres = items["class"].str.split().str.join("|")
    return interactions, pd.DataFrame({ITEM: items[ITEM].astype("int64"), "title": title, "genres": genres})


def _read_table(path: Path, **read_csv_args) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **read_csv_args)
    except (ValueError, KeyError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read as MovieLens ({error}); delete it to download a fresh copy") from error


def _verify(interactions: pd.DataFrame, expected: ExpectedCounts, dataset_dir: Path) -> None:
    found = ExpectedCounts(len(interactions), interactions[USER].nunique(), interactions[ITEM].nunique())
    if found != expected:
        raise DataError(
            f"{dataset_dir}: found {found.interactions:,} interactions, {found.users:,} users, {found.items:,} items; "
            f"ML-100K has {expected.interactions:,}, {expected.users:,}, {expected.items:,}. "
            "Delete the folder to download a fresh copy"
        )


def _download_grouplens_zip(url: str, data_dir: Path, timeout: float) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir) as scratch:
        archive = Path(scratch) / "ml-100k.zip"
        with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="ml-100k.zip") as progress:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    progress.update(len(chunk))
        with zipfile.ZipFile(archive) as zipped:
            _safe_extract(zipped, zipped.namelist(), "", data_dir)


def _extract_from_wheel(wheel: str, sha256: str, data_dir: Path, pip_download: PipDownload) -> None:
    cache = data_dir / "downloads"
    wheel_path = _cached_wheel(cache, sha256)
    if wheel_path is None:
        pip_download(wheel, cache)
        wheel_path = _cached_wheel(cache, sha256)
    if wheel_path is None:
        raise DataError(
            f"{cache}: no wheel of {wheel} with sha256 {sha256} after pip download; "
            "check that PyPI is reachable, or put ML-100K files in "
            f"{data_dir / DATASET_DIR}"
        )
    with zipfile.ZipFile(wheel_path) as zipped:
        members = [name for name in zipped.namelist() if name.startswith(RECBOLE_DATASET_PREFIX)]
        members = [name for name in members if Path(name).suffix in {".inter", ".item", ".user"}]
        _safe_extract(zipped, members, RECBOLE_DATASET_PREFIX, data_dir / DATASET_DIR)


def _cached_wheel(cache: Path, sha256: str) -> Path | None:
    for path in sorted(cache.glob("*.whl")) if cache.is_dir() else []:
        if hashlib.sha256(path.read_bytes()).hexdigest() == sha256:
            return path
    return None


def _pip_download(requirement: str, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest), requirement]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        detail = (getattr(error, "stderr", "") or "").strip().splitlines()[-1:] or [str(error)]
        raise DataError(f"pip download {requirement} failed ({detail[0]}); put ML-100K files in {dest.parent}") from error


def _safe_extract(zipped: zipfile.ZipFile, members: list[str], strip_prefix: str, dest: Path) -> None:
    """Extract `members` with `strip_prefix` removed, refusing any that would land outside `dest`.

    Files are written to a scratch folder first and moved in one by one, so an interrupted
    extraction never leaves a truncated file where the next run would trust it.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with tempfile.TemporaryDirectory(dir=dest) as scratch:
        staged: list[tuple[Path, Path]] = []
        for name in members:
            if name.endswith("/"):
                continue
            relative = name[len(strip_prefix) :]
            target = (root / relative).resolve()
            if root not in target.parents:
                raise DataError(f"archive member {name!r} would be written outside {dest}; refusing to extract")
            staging = Path(scratch) / relative
            staging.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(name) as source, open(staging, "wb") as out:
                shutil.copyfileobj(source, out)
            staged.append((staging, target))
        for staging, target in staged:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, target)


class MovieLensDataModule(InteractionDataModule):
    """ML-100K out of the box; see `resolve_movielens` for where it comes from."""

    def __init__(
        self,
        data_dir: str,
        grouplens_url: str = GROUPLENS_URL,
        recbole_wheel: str = RECBOLE_WHEEL,
        recbole_wheel_sha256: str = RECBOLE_WHEEL_SHA256,
        download_timeout: float = 10.0,
        **split_and_batching,
    ) -> None:
        super().__init__(**split_and_batching)
        self.data_dir = data_dir
        self.grouplens_url = grouplens_url
        self.recbole_wheel = recbole_wheel
        self.recbole_wheel_sha256 = recbole_wheel_sha256
        self.download_timeout = download_timeout

    def load(self) -> LoadedInteractions:
        return resolve_movielens(
            self.data_dir,
            url=self.grouplens_url,
            wheel=self.recbole_wheel,
            wheel_sha256=self.recbole_wheel_sha256,
            timeout=self.download_timeout,
        )
