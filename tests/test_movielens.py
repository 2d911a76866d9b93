"""MovieLens source resolution on small generated fixtures: local layouts, zip download, PyPI wheel."""

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from recsys_lightning.data.movielens import GENRES, RECBOLE_DATASET_PREFIX, ExpectedCounts, resolve_movielens
from recsys_lightning.errors import DataError

RATINGS = [(1, 10, 5, 881250949), (1, 20, 3, 881250950), (2, 10, 4, 881250951), (3, 30, 1, 881250952)]
FIXTURE_COUNTS = ExpectedCounts(interactions=4, users=3, items=3)
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
        data_dir, url=UNREACHABLE, wheel="recbole==1.2.1", wheel_sha256=sha256,
        expected=FIXTURE_COUNTS, pip_download=copying_pip(wheel, calls),
    )  # fmt: skip
    check_fixture(loaded, "pypi-recbole-wheel")
    assert calls == ["recbole==1.2.1"]
    assert sorted(p.name for p in (data_dir / "ml-100k").iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert not (data_dir / "recbole").exists()
    check_fixture(resolve_movielens(data_dir, url=UNREACHABLE, expected=FIXTURE_COUNTS), "recbole-local")


def test_wheel_with_wrong_hash_is_refused(tmp_path):
    wheel, _ = fake_wheel(tmp_path)
    with pytest.raises(DataError, match="sha256"):
        resolve_movielens(
            tmp_path / "data", url=UNREACHABLE, wheel_sha256="0" * 64,
            expected=FIXTURE_COUNTS, pip_download=copying_pip(wheel, []),
        )  # fmt: skip
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
