"""Fetching MovieLens where no copy is on disk yet. ML-100K: the official GroupLens zip, else the copy of
ML-100K inside the `recbole==1.2.1` wheel on PyPI, which is reachable from networks that only reach a
package index (that wheel is only unzipped, never installed). The later releases: their GroupLens zip,
checked against the MD5 GroupLens publishes, else one line saying which archive to unzip where.

All unpack into `<data_dir>/<folder>`, through a scratch folder, so an interrupted fetch never leaves a
truncated file there; `movielens.py` reads and verifies whatever lands there, as it does a local copy.
Processes started together on a fresh machine (a parallel sweep's jobs) fetch one at a time (`one_fetch_at_a_time`),
and each moves the ratings file in last, so a reader never finds the ratings without the files beside them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm import tqdm

from recsys_lightning.errors import DataError, cut

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_DATASET_PREFIX = "recbole/dataset_example/ml-100k/"
DATASET_DIR = "ml-100k"

PipDownload = Callable[[str, Path], None]
# Moved in after every other file of a release: a reader that finds the ratings finds the rest too.
RATINGS_FILES = frozenset({"u.data", "ml-100k.inter", "ratings.dat", "ratings.csv"})


def fetch_ml100k(data_dir: Path, url: str, wheel: str, wheel_sha256: str, timeout: float, pip_download: PipDownload | None = None) -> str:
    """Unpack ML-100K into `data_dir / DATASET_DIR` from the first source that answers, and name that
    source as the run records it: "grouplens-download" or "pypi-recbole-wheel"."""
    # Before any download: a folder it cannot write would end in a raw OSError after the attempt.
    _check_writable(data_dir, "MovieLens-100K", DATASET_DIR)
    try:
        _download_grouplens_zip(url, data_dir, timeout)
        return "grouplens-download"
    except (OSError, zipfile.BadZipFile) as error:
        log.warning("GroupLens unreachable (%s); taking ML-100K from the PyPI wheel %s", error, wheel)
        _extract_from_wheel(wheel, wheel_sha256, data_dir, pip_download or _pip_download)
        return "pypi-recbole-wheel"


def fetch_archive(url: str, md5: str | None, data_dir: Path, folder: str, title: str, timeout: float) -> None:
    """Unpack the release's official zip into `data_dir` (it holds `folder/`), or one DataError saying which
    archive to download and where to unzip it: GroupLens is the only source of these releases."""
    _check_writable(data_dir, title, folder)
    try:
        _download_grouplens_zip(url, data_dir, timeout, md5)
    except (OSError, zipfile.BadZipFile) as error:
        reason = cut(str(getattr(error, "reason", error)), 120)  # a URLError's reason says it best
        raise DataError(
            f"{cut(str(data_dir / folder), 200)}: no {title} here and {url} could not be fetched ({reason}): download that "
            f"archive and unzip it into {cut(str(data_dir), 200)}, so that it makes {folder}/ there"
        ) from error


@contextlib.contextmanager
def one_fetch_at_a_time(data_dir: Path, title: str, folder: str) -> Iterator[None]:
    """Hold an advisory lock on `<data_dir>/.fetch.lock` (the kernel drops it if the process dies): a second
    process that finds no copy waits here while the first fetches, then reads what the first unpacked
    instead of downloading into the same files. Only taken to fetch, so a read-only data folder still reads;
    one that cannot be written is refused in one line before the lock file is made."""
    _check_writable(data_dir, title, folder)
    data_dir.mkdir(parents=True, exist_ok=True)
    with os.fdopen(_open_lock_file(data_dir / ".fetch.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open_lock_file(path: Path) -> int:
    """A descriptor of the plain file `path`, made if missing; a link, folder or FIFO put there is refused, not
    followed, waited on (a FIFO opened to write blocks until a reader comes) or raised as a raw OSError."""
    refusal = f"{cut(str(path), 200)}: the fetch lock is not a plain file"
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as error:
        raise DataError(f"{refusal} ({error.strerror or error}); it is only a lock, so delete it and run again") from error
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise DataError(f"{refusal}; it is only a lock, so delete it and run again")
    return descriptor


def _check_writable(data_dir: Path, title: str, folder: str) -> None:
    """Prove a file can be made in `data_dir`, or in its nearest existing parent, creating nothing: as
    root a permission bit proves nothing, so the probe really writes (atomic.check_writable_folder's
    rule, which data code does not import)."""
    existing = next(folder for folder in (data_dir, *data_dir.parents) if folder.exists() or folder == folder.parent)
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise DataError(
            f"paths.data_dir={cut(str(data_dir), 200)}: cannot write in {cut(str(existing), 200)} ({error.strerror or error}); "
            f"{title} is not there yet and is fetched into it: set RECSYS_DATA_DIR (or paths.data_dir) to a folder you "
            f"can write, or put the {folder} folder there"
        ) from error


def _download_grouplens_zip(url: str, data_dir: Path, timeout: float, md5: str | None = None) -> None:
    """Download `url` into a scratch file and unzip it into `data_dir`; with `md5`, only an archive of that digest."""
    data_dir.mkdir(parents=True, exist_ok=True)
    name = url.rsplit("/", 1)[-1] or "archive.zip"
    with tempfile.TemporaryDirectory(dir=data_dir) as scratch:
        archive = Path(scratch) / "archive.zip"
        digest = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=cut(name, 40)) as progress:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    progress.update(len(chunk))
        if md5 is not None and digest.hexdigest() != md5:
            raise DataError(
                f"{cut(url, 200)}: the download's md5 is {digest.hexdigest()}, not {md5} as GroupLens publishes it; retry, or "
                f"download it yourself and unzip it into {cut(str(data_dir), 200)}"
            )
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
        for staging, target in sorted(staged, key=lambda pair: pair[1].name in RATINGS_FILES):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, target)
