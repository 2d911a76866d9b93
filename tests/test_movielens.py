"""MovieLens source resolution on small generated fixtures (local layouts, zip download, PyPI wheel),
and the checks that refuse a damaged local copy of the real ML-100K."""

import hashlib
import os
import shutil
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from recsys_lightning.data.fetch import RECBOLE_DATASET_PREFIX
from recsys_lightning.data.movielens import (
    GENRES,
    ML100K,
    ExpectedContent,
    ratings_sha256,
    resolve_movielens,
)
from recsys_lightning.errors import DataError

RATINGS = [(1, 10, 5, 881250949), (1, 20, 3, 881250950), (2, 10, 4, 881250951), (3, 30, 1, 881250952)]
FIXTURE_COUNTS = ExpectedContent(
    interactions=4,
    users=3,
    items=3,
    ratings_sha256=ratings_sha256(pd.DataFrame(RATINGS, columns=["user_id", "item_id", "rating", "timestamp"])),
)
UNREACHABLE = "http://127.0.0.1:9/ml-100k.zip"  # discard port: connection refused at once


def grouplens_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    flags = lambda *on: "|".join("1" if g in on else "0" for g in GENRES)  # noqa: E731
    rows = [
        f"10|Toy Story (1995)|01-Jan-1995||http://x|{flags('Animation', 'Comedy')}",
        f"20|Les Misérables (1995)|01-Jan-1995||http://x|{flags('Drama')}",
        f"30|Heat (1995)|01-Jan-1995||http://x|{flags('Action', 'Thriller')}",
    ]
    (folder / "u.item").write_bytes("\n".join(rows).encode("latin-1") + b"\n")
    return folder


def recbole_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"] + [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in RATINGS]
    (folder / "ml-100k.inter").write_text("\n".join(inter) + "\n")
    items = [
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
        "10\tToy Story\t1995\tAnimation Comedy",
        "20\tLes Misérables\t1995\tDrama",
        "30\tHeat\t1995\tAction Thriller",
    ]
    (folder / "ml-100k.item").write_text("\n".join(items) + "\n", encoding="utf-8")
    (folder / "ml-100k.user").write_text("user_id:token\tage:token\n1\t24\n2\t53\n3\t23\n")
    return folder


def zipped(source: Path, archive: Path, prefix: str, extra: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(source.iterdir()):
            out.write(path, prefix + path.name)
        for name, text in (extra or {}).items():
            out.writestr(name, text)
    return archive


def fake_wheel(tmp_path: Path, extra: dict[str, str] | None = None) -> tuple[Path, str]:
    wheel = zipped(recbole_files(tmp_path / "wheel-src"), tmp_path / "recbole-1.2.1-py3-none-any.whl", RECBOLE_DATASET_PREFIX, extra)
    return wheel, hashlib.sha256(wheel.read_bytes()).hexdigest()


def copying_pip(wheel: Path, calls: list):
    def pip_download(requirement: str, dest: Path) -> None:
        calls.append(requirement)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(wheel, dest / wheel.name)

    return pip_download


def check_fixture(loaded, source):
    assert loaded.source == source
    assert len(loaded.interactions) == 4
    titles = dict(zip(loaded.items.item_id, loaded.items.title))
    assert titles[20] == "Les Misérables (1995)"
    genres = dict(zip(loaded.items.item_id, loaded.items.genres))
    assert genres[30] == "Action|Thriller"


def test_local_grouplens_layout(tmp_path):
    grouplens_files(tmp_path / "ml-100k")
    check_fixture(resolve_movielens(tmp_path, url=UNREACHABLE, expected=FIXTURE_COUNTS), "grouplens-local")


def test_local_recbole_layout(tmp_path):
    recbole_files(tmp_path / "ml-100k")
    check_fixture(resolve_movielens(tmp_path, url=UNREACHABLE, expected=FIXTURE_COUNTS), "recbole-local")


def test_grouplens_zip_is_downloaded_and_extracted(tmp_path):
    archive = zipped(grouplens_files(tmp_path / "src"), tmp_path / "ml-100k.zip", "ml-100k/")
    data_dir = tmp_path / "data"
    check_fixture(resolve_movielens(data_dir, url=archive.as_uri(), expected=FIXTURE_COUNTS), "grouplens-download")
    assert (data_dir / "ml-100k" / "u.data").is_file()
    check_fixture(resolve_movielens(data_dir, url=UNREACHABLE, expected=FIXTURE_COUNTS), "grouplens-local")


def test_unreachable_grouplens_falls_back_to_pypi_wheel_once(tmp_path):
    wheel, sha256 = fake_wheel(tmp_path, extra={"recbole/__init__.py": "raise SystemExit('never imported')"})
    calls = []
    data_dir = tmp_path / "data"
    loaded = resolve_movielens(
        data_dir,
        url=UNREACHABLE,
        wheel="recbole==1.2.1",
        wheel_sha256=sha256,
        expected=FIXTURE_COUNTS,
        pip_download=copying_pip(wheel, calls),
    )
    check_fixture(loaded, "pypi-recbole-wheel")
    assert calls == ["recbole==1.2.1"]
    assert sorted(p.name for p in (data_dir / "ml-100k").iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert not (data_dir / "recbole").exists()
    check_fixture(resolve_movielens(data_dir, url=UNREACHABLE, expected=FIXTURE_COUNTS), "recbole-local")


def test_runs_started_together_on_a_fresh_machine_fetch_once_and_read_the_same_copy(tmp_path):
    """Two resolves at once (a parallel sweep's jobs, two test workers): the second waits on the fetch lock
    while the first downloads slowly, then reads the first's copy instead of downloading into the same files."""
    wheel, sha256 = fake_wheel(tmp_path)
    calls = []
    copy = copying_pip(wheel, calls)

    def slow_pip(requirement: str, dest: Path) -> None:
        time.sleep(0.5)  # the other resolve finds no copy meanwhile and must wait, not download too
        copy(requirement, dest)

    def resolve():
        options = dict(url=UNREACHABLE, wheel="recbole==1.2.1", wheel_sha256=sha256, expected=FIXTURE_COUNTS, pip_download=slow_pip)
        return resolve_movielens(tmp_path / "data", **options)

    with ThreadPoolExecutor(2) as pool:
        sources = sorted(loaded.source for loaded in pool.map(lambda _: resolve(), range(2)))
    assert calls == ["recbole==1.2.1"] and sources == ["pypi-recbole-wheel", "recbole-local"]


@pytest.mark.parametrize("kind", ["folder", "fifo", "symlink"])
def test_a_fetch_lock_that_is_no_plain_file_is_refused_in_one_line_not_waited_on(tmp_path, kind):
    """`<data_dir>/.fetch.lock` is untrusted: a folder there was a raw IsADirectoryError, a FIFO a hang
    (opening it to write waits for a reader), a link a lock taken on whatever file it names."""
    lock = tmp_path / "data" / ".fetch.lock"
    lock.parent.mkdir()
    {"folder": lock.mkdir, "fifo": lambda: os.mkfifo(lock), "symlink": lambda: lock.symlink_to(tmp_path / "elsewhere")}[kind]()
    with pytest.raises(DataError) as caught:
        resolve_movielens(tmp_path / "data", url=UNREACHABLE, expected=FIXTURE_COUNTS, pip_download=copying_pip(tmp_path, []))
    message = str(caught.value)
    assert message.startswith(f"{lock}: the fetch lock is not a plain file") and message.endswith("delete it and run again")
    assert "\n" not in message and not (tmp_path / "elsewhere").exists()


def test_an_extraction_moves_the_ratings_file_in_last(tmp_path, monkeypatch):
    """A process that reads while another extracts finds the ratings file only once every other file is there."""
    wheel, sha256 = fake_wheel(tmp_path)
    moved = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda source, target: (moved.append(Path(target).name), replace(source, target)))
    resolve_movielens(
        tmp_path / "data",
        url=UNREACHABLE,
        wheel="recbole==1.2.1",
        wheel_sha256=sha256,
        expected=FIXTURE_COUNTS,
        pip_download=copying_pip(wheel, []),
    )
    assert moved[-1] == "ml-100k.inter" and sorted(moved) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]


def test_without_download_a_local_copy_is_read_and_nothing_is_fetched_or_created(tmp_path):
    """evaluate takes data_dir from an untrusted run folder: it may read there, never create or write."""
    recbole_files(tmp_path / "local" / "ml-100k")
    loaded = resolve_movielens(tmp_path / "local", url=UNREACHABLE, expected=FIXTURE_COUNTS, download=False)
    check_fixture(loaded, "recbole-local")
    calls = []
    archive = zipped(grouplens_files(tmp_path / "src"), tmp_path / "ml-100k.zip", "ml-100k/")
    with pytest.raises(DataError) as refused:
        resolve_movielens(
            tmp_path / "x" / "deep", url=archive.as_uri(), expected=FIXTURE_COUNTS, pip_download=copying_pip(archive, calls), download=False
        )
    assert str(refused.value) == (
        f"{tmp_path / 'x' / 'deep' / 'ml-100k'}: no MovieLens-100K here; evaluate reads the run's data, "
        "it does not fetch it: run training once (which fetches it) or fix data_dir in "
        "<run>/.hydra/config.yaml"
    )
    assert not (tmp_path / "x").exists() and calls == []


def test_wheel_with_wrong_hash_is_refused(tmp_path):
    wheel, _ = fake_wheel(tmp_path)
    with pytest.raises(DataError, match="sha256"):
        resolve_movielens(
            tmp_path / "data",
            url=UNREACHABLE,
            wheel_sha256="0" * 64,
            expected=FIXTURE_COUNTS,
            pip_download=copying_pip(wheel, []),
        )
    assert not (tmp_path / "data" / "ml-100k").exists()


def test_archive_member_escaping_the_data_dir_is_refused(tmp_path):
    source = grouplens_files(tmp_path / "src")
    archive = zipped(source, tmp_path / "ml-100k.zip", "ml-100k/", extra={"ml-100k/../../evil.txt": "x"})
    with pytest.raises(DataError, match="outside"):
        resolve_movielens(tmp_path / "data" / "nested", url=archive.as_uri(), expected=FIXTURE_COUNTS)
    assert not (tmp_path / "data" / "evil.txt").exists()
    assert not (tmp_path / "data" / "nested" / "ml-100k" / "u.data").exists()


def test_wrong_content_is_rejected_with_counts(tmp_path):
    grouplens_files(tmp_path / "ml-100k")
    with pytest.raises(DataError, match=r"found 4 interactions, 3 users, 3 items; ML-100K has 100,000"):
        resolve_movielens(tmp_path, url=UNREACHABLE)


def test_fixture_digest_is_the_same_in_both_layouts_and_changes_with_one_rating(tmp_path):
    grouplens_files(tmp_path / "a" / "ml-100k")
    recbole_files(tmp_path / "b" / "ml-100k")
    for data_dir in (tmp_path / "a", tmp_path / "b"):
        assert ratings_sha256(resolve_movielens(data_dir, url=UNREACHABLE, expected=FIXTURE_COUNTS).interactions) == (
            FIXTURE_COUNTS.ratings_sha256
        )
    edited = tmp_path / "a" / "ml-100k" / "u.data"
    edited.write_text(edited.read_text().replace("\t5\t", "\t4\t", 1))
    with pytest.raises(DataError, match="does not match MovieLens-100K"):
        resolve_movielens(tmp_path / "a", url=UNREACHABLE, expected=FIXTURE_COUNTS)


# ---- the real ML-100K: a damaged local copy is refused with one line that says what to do ----

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real_recbole_copy() -> Path:
    """The project's ML-100K folder (fetched once, as training does, when it is not there yet)."""
    resolve_movielens(ROOT / "data")
    folder = ROOT / "data" / "ml-100k"
    assert (folder / "ml-100k.inter").is_file(), "these tests need the RecBole layout the PyPI wheel provides"
    return folder


def copy_recbole(real: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ml-100k"
    folder.mkdir(parents=True)
    for name in ("ml-100k.inter", "ml-100k.item"):
        shutil.copy(real / name, folder / name)
    return folder


def as_grouplens(real: Path, tmp_path: Path) -> Path:
    """The same data in the GroupLens layout: u.data is ml-100k.inter without its header, u.item has
    the year inside the title and one 0/1 flag per genre."""
    folder = tmp_path / "ml-100k"
    folder.mkdir(parents=True)
    (folder / "u.data").write_bytes((real / "ml-100k.inter").read_bytes().split(b"\n", 1)[1])
    items = pd.read_csv(real / "ml-100k.item", sep="\t", dtype=str, keep_default_na=False)
    items.columns = [c.split(":")[0] for c in items.columns]
    title = items["movie_title"].where(items["release_year"] == "", items["movie_title"] + " (" + items["release_year"] + ")")
    flags = pd.DataFrame({g: items["class"].str.split().apply(lambda tokens, g=g: int(g in tokens)) for g in GENRES})
    u_item = pd.concat(
        [
            items["item_id"],
            title,
            pd.Series("01-Jan-1995", index=items.index),
            pd.Series("", index=items.index),
            pd.Series("http://x", index=items.index),
            flags,
        ],
        axis=1,
    )
    (folder / "u.item").write_bytes(u_item.to_csv(sep="|", header=False, index=False).encode("latin-1"))
    return folder


def assert_refused(folder: Path, message: str, named: str) -> None:
    with pytest.raises(DataError) as caught:
        resolve_movielens(folder.parent, url=UNREACHABLE)
    text = str(caught.value)
    assert "\n" not in text and len(text) < 400, text
    assert text.startswith(str(folder / named) if named else str(folder)), text
    assert message in text, text
    assert text.endswith(f"delete {folder} to fetch a fresh copy"), text


def test_real_copy_loads_in_both_layouts_with_the_recorded_digest(real_recbole_copy, tmp_path):
    recbole = resolve_movielens(copy_recbole(real_recbole_copy, tmp_path / "r").parent, url=UNREACHABLE)
    grouplens = resolve_movielens(as_grouplens(real_recbole_copy, tmp_path / "g").parent, url=UNREACHABLE)
    assert (recbole.source, grouplens.source) == ("recbole-local", "grouplens-local")
    for loaded in (recbole, grouplens):
        assert ratings_sha256(loaded.interactions) == ML100K.ratings_sha256
        assert loaded.interactions.iloc[0].tolist() == [196, 242, 3.0, 881250949]
    assert grouplens.items.to_dict("list") == recbole.items.to_dict("list")


def edit_first_rating(data: bytes) -> bytes:
    return data.replace(b"196\t242\t3\t881250949", b"196\t242\t4\t881250949", 1)


INTER_DAMAGE = {
    # name: (edit of ml-100k.inter's bytes, part of the message)
    "one_rating_edited": (edit_first_rating, "does not match MovieLens-100K (sha256 of its sorted ratings"),
    "timestamp_cut_short": (lambda data: data[:-4] + b"\n", "does not match MovieLens-100K"),
    "cut_mid_line": (lambda data: data[: data.rindex(b"\t")], "data row 100,000: a cell is empty or not finite"),
    "last_line_dropped": (lambda data: data[: data.rstrip().rindex(b"\n") + 1], "found 99,999 interactions"),
    "nul_bytes": (lambda data: data[:500] + b"\0\0\0" + data[500:], "cannot be read as MovieLens-100K (could not convert"),
    "latin1_byte": (lambda data: data[:500] + b"\xe9" + data[500:], "cannot be read as MovieLens-100K ('utf-8' codec"),
    "word_in_a_cell": (lambda data: data.replace(b"\t881250949", b"\tyesterday", 1), "could not convert string to float"),
    "fractional_timestamp": (
        lambda data: data.replace(b"\t881250949", b"\t881250949.5", 1),
        "data row 1: a cell is empty or not finite, or an id or timestamp is not whole",
    ),
    "infinite_rating": (lambda data: data.replace(b"\t3\t881250949", b"\tinf\t881250949", 1), "data row 1: a cell is empty or not finite"),
    "extra_cell_first_row": (lambda data: data.replace(b"\t881250949\n", b"\t881250949\t7\n", 1), "more cells than the header"),
    "extra_cell_later_row": (lambda data: data.replace(b"\t891717742\n", b"\t891717742\t7\n", 1), "Expected 4 fields in line 3"),
    "empty_file": (lambda data: b"", "No columns to parse"),
    "renamed_column": (lambda data: data.replace(b"rating:float", b"score:float", 1), "(no rating column)"),
}


@pytest.mark.parametrize("damage", list(INTER_DAMAGE))
def test_damaged_recbole_ratings_are_refused_in_one_line(real_recbole_copy, tmp_path, damage):
    edit, message = INTER_DAMAGE[damage]
    folder = copy_recbole(real_recbole_copy, tmp_path)
    ratings = folder / "ml-100k.inter"
    ratings.write_bytes(edit(ratings.read_bytes()))
    assert_refused(folder, message, "" if damage == "last_line_dropped" else "ml-100k.inter")


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("u.data", edit_first_rating, "does not match MovieLens-100K"),
        ("u.data", lambda data: data[: data.rindex(b"\t")], "data row 100,000: a cell is empty"),
        ("u.item", lambda data: data[: data.rindex(b"|")], "Integer column has NA values"),
        ("u.item", lambda data: data.replace(b"\n2|", b"\n1|", 1), "lists 1,682 rows with 1,681 distinct item ids"),
    ],
    ids=["rating_edited", "ratings_cut_mid_line", "items_cut_mid_line", "duplicate_item_id"],
)
def test_damaged_grouplens_files_are_refused_in_one_line(real_recbole_copy, tmp_path, name, edit, message):
    folder = as_grouplens(real_recbole_copy, tmp_path)
    (folder / name).write_bytes(edit((folder / name).read_bytes()))
    assert_refused(folder, message, name)


def test_recbole_item_file_with_a_bad_id_is_refused(real_recbole_copy, tmp_path):
    folder = copy_recbole(real_recbole_copy, tmp_path)
    items = folder / "ml-100k.item"
    items.write_bytes(items.read_bytes().replace(b"\n2\tGoldenEye", b"\ntwo\tGoldenEye", 1))
    assert_refused(folder, "cannot be read as MovieLens-100K", "ml-100k.item")


def test_verifying_the_real_copy_is_cheap(real_recbole_copy, tmp_path):
    data_dir = copy_recbole(real_recbole_copy, tmp_path).parent
    resolve_movielens(data_dir, url=UNREACHABLE)  # warm the page cache and imports
    times = []
    for _ in range(3):
        start = os.times().elapsed
        resolve_movielens(data_dir, url=UNREACHABLE)
        times.append(os.times().elapsed - start)
    assert min(times) < 0.5, times  # read + parse + digest; the digest alone is a few hundredths
