"""The MovieLens releases after ML-100K, read from small files written in each release's exact format
(separators, encoding, quoting, headers), with counts and archive digests overridden by a `Release` of
the test's own; the real releases' entries are checked against their official names and URLs."""

import hashlib
import io
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from recsys_lightning.data.movielens import MovieLensDataModule
from recsys_lightning.data.movielens_releases import RELEASES, DoubleColonAsTab, ReleaseCounts, resolve_release
from recsys_lightning.errors import ConfigError, DataError
from recsys_lightning.train import train

from helpers import run_module, training_config

UNREACHABLE = "http://127.0.0.1:9/"  # discard port: connection refused at once
CSV_RELEASES = ("ml-20m", "ml-25m", "ml-32m", "ml-latest-small")


def ml1m_files(folder: Path) -> Path:
    """ml-1m's .dat files as GroupLens writes them: `::`, no header, latin-1, quotes and colons in titles."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n3::3408::4::978298000\n")
    movies = [
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical",
        '3408::"Great Performances" Cats (1998)::Musical',
        "260::Star Wars: Episode IV - A New Hope (1977)::Action|Adventure|Fantasy|Sci-Fi",
        "3::Misérables, Les (1995)::Drama",
    ]
    (folder / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n")
    return folder


def ml10m_files(folder: Path) -> Path:
    """ml-10m (folder ml-10M100K): half-star ratings and tags.dat, `::`-separated."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("1::122::5::838985046\n1::185::4.5::838983525\n2::122::3::868245777\n")
    (folder / "movies.dat").write_bytes(
        "122::Boomerang (1992)::Comedy|Romance\n185::Net, The (1995)::Action|Crime|Thriller\n".encode("latin-1")
    )
    (folder / "tags.dat").write_text(
        "15::122::Eddie Murphy::1215184630\n20::122::eddie murphy::1215184631\n20::185::hackers: 1990s::1215184632\n"
    )
    return folder


def csv_files(folder: Path) -> Path:
    """ml-20m and later: UTF-8 CSV with a header, titles quoted where they hold a comma."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,3.5,1112484676\n2,2,4.0,974820889\n")
    movies = [
        "movieId,title,genres",
        "2,Jumanji (1995),Adventure|Children|Fantasy",
        '29,"City of Lost Children, The (Cité des enfants perdus, La) (1995)",Adventure|Drama|Fantasy|Mystery|Sci-Fi',
        "131260,Rentun Ruusu (2001),(no genres listed)",
    ]
    (folder / "movies.csv").write_text("\n".join(movies) + "\n", encoding="utf-8")
    tags = [
        "userId,movieId,tag,timestamp",
        "18,2,Robin Williams,1240597180",
        '65,29,"dark, dreamlike",1368150078',
        "70,29,Jeunet,1368150079",
    ]
    (folder / "tags.csv").write_text("\n".join(tags) + "\n", encoding="utf-8")
    return folder


def fixture_release(name: str, ratings: int = 4, users: int = 3) -> object:
    return replace(RELEASES[name], counts=ReleaseCounts(ratings, users), url=f"{UNREACHABLE}{name}.zip", archive_md5=None)


def test_releases_name_the_official_archives_and_folders():
    assert {name: (r.folder, r.url) for name, r in RELEASES.items()} == {
        name: (folder, f"https://files.grouplens.org/datasets/movielens/{name}.zip")
        for name, folder in [
            ("ml-1m", "ml-1m"),
            ("ml-10m", "ml-10M100K"),
            ("ml-20m", "ml-20m"),
            ("ml-25m", "ml-25m"),
            ("ml-32m", "ml-32m"),
            ("ml-latest-small", "ml-latest-small"),
        ]
    }
    assert RELEASES["ml-1m"].counts == ReleaseCounts(1_000_209, 6_040)
    assert RELEASES["ml-latest-small"].counts is None  # changes over time: structure only


def test_ml1m_dat_files_parse_with_titles_ids_and_demographics(tmp_path):
    ml1m_files(tmp_path / "ml-1m")
    loaded = resolve_release(
        tmp_path, fixture_release("ml-1m"), item_features=("genre", "year"), user_features=("age", "gender", "occupation")
    )
    assert loaded.source == "grouplens-local"
    assert loaded.interactions.values.tolist() == [
        [1, 1193, 5, 978300760],
        [1, 661, 3, 978302109],
        [2, 1193, 4, 978298413],
        [3, 3408, 4, 978298000],
    ]
    assert str(loaded.interactions.dtypes["rating"]) == "float32"
    titles = dict(zip(loaded.items.item_id, loaded.items.title))
    assert titles[3408] == '"Great Performances" Cats (1998)' and titles[3] == "Misérables, Les (1995)"
    assert titles[260] == "Star Wars: Episode IV - A New Hope (1977)"
    items = loaded.item_features
    assert items.ids.tolist() == ["1193", "661", "3408", "260", "3"] and items.sep == "|"
    assert items.values.loc[1].tolist() == ["Animation|Children's|Musical", "1996"]
    users = loaded.user_features
    assert users.ids.tolist() == ["1", "2", "3"]
    assert users.values.to_dict("list") == {
        "age": ["under 18", "56+", "25-34"],
        "gender": ["F", "M", "M"],
        "occupation": ["10", "16", "15"],
    }


def test_ml10m_reads_its_folder_half_stars_and_tags(tmp_path):
    ml10m_files(tmp_path / "ml-10M100K")
    loaded = resolve_release(tmp_path, fixture_release("ml-10m", ratings=3, users=2), item_features=("tag", "genre"))
    assert loaded.interactions["rating"].tolist() == [5.0, 4.5, 3.0]
    assert loaded.items.title.tolist() == ["Boomerang (1992)", "Net, The (1995)"]
    # Tags lower-cased and deduplicated per movie, a colon inside a tag kept.
    assert loaded.item_features.values.to_dict("list") == {
        "tag": ["eddie murphy", "hackers: 1990s"],
        "genre": ["Comedy|Romance", "Action|Crime|Thriller"],
    }


@pytest.mark.parametrize("name", CSV_RELEASES)
def test_csv_releases_parse_quoted_utf8_titles_genres_and_tags(tmp_path, name):
    csv_files(tmp_path / RELEASES[name].folder)
    loaded = resolve_release(tmp_path, fixture_release(name, ratings=3, users=2), item_features=("genre", "year", "tag"))
    assert loaded.interactions.values.tolist() == [[1, 2, 3.5, 1112486027], [1, 29, 3.5, 1112484676], [2, 2, 4.0, 974820889]]
    assert loaded.items.title.tolist()[1] == "City of Lost Children, The (Cité des enfants perdus, La) (1995)"
    assert loaded.item_features.values.to_dict("list") == {
        "genre": ["Adventure|Children|Fantasy", "Adventure|Drama|Fantasy|Mystery|Sci-Fi", ""],  # "(no genres listed)": none
        "year": ["1995", "1995", "2001"],
        "tag": ["robin williams", "dark, dreamlike|jeunet", ""],
    }
    assert loaded.user_features is None


@pytest.mark.parametrize(
    ("name", "write", "file", "bad_line", "line"),
    [
        ("ml-1m", ml1m_files, "ratings.dat", "2::1193:4::978298413", 3),  # one colon short
        ("ml-1m", ml1m_files, "ratings.dat", "2::1193::4.5.1::978298413", 3),
        ("ml-10m", ml10m_files, "ratings.dat", "2::122::3", 3),  # cut short
        ("ml-20m", csv_files, "ratings.csv", "2,2,4.0,97482.5", 4),  # a fractional timestamp
        ("ml-20m", csv_files, "ratings.csv", "2,2,4.0,974820889,7", 4),  # a cell too many
    ],
)
def test_a_malformed_ratings_line_is_refused_naming_file_and_line(tmp_path, name, write, file, bad_line, line):
    folder = write(tmp_path / RELEASES[name].folder)
    lines = (folder / file).read_text().splitlines()
    lines[line - 1] = bad_line
    (folder / file).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as refused:
        resolve_release(tmp_path, fixture_release(name, ratings=len(lines) - (not RELEASES[name].dat), users=2))
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{folder / file}: cannot be read as {RELEASES[name].title}")
    assert f"line {line}" in message and f"replace {folder} with a fresh copy of {UNREACHABLE}{name}.zip" in message


@pytest.mark.parametrize(
    ("name", "write", "file", "line", "movie"),
    [("ml-20m", csv_files, "movies.csv", 2, "02"), ("ml-1m", ml1m_files, "movies.dat", 1, "1193.0")],
)
def test_a_movie_id_not_written_as_the_ratings_write_it_is_refused(tmp_path, name, write, file, line, movie):
    folder = write(tmp_path / RELEASES[name].folder)
    text = (folder / file).read_text(encoding="latin-1" if RELEASES[name].dat else "utf-8").splitlines()
    text[line - 1] = movie + text[line - 1][text[line - 1].index(":" if RELEASES[name].dat else ",") :]
    (folder / file).write_text("\n".join(text) + "\n", encoding="latin-1" if RELEASES[name].dat else "utf-8")
    with pytest.raises(
        DataError, match=rf"{file}: cannot be read as {RELEASES[name].title} \(line {line}: movie id '{movie}' is not a whole"
    ):
        resolve_release(tmp_path, fixture_release(name, ratings=4 if RELEASES[name].dat else 3, users=3 if RELEASES[name].dat else 2))


def test_a_csv_release_with_another_header_is_refused(tmp_path):
    folder = csv_files(tmp_path / "ml-25m")
    (folder / "ratings.csv").write_text("user,item,rating,timestamp\n1,2,3.5,1\n")
    with pytest.raises(
        DataError, match=r"ratings.csv: cannot be read as MovieLens-25M \(line 1: the header is 'user,item,rating,timestamp'"
    ):
        resolve_release(tmp_path, fixture_release("ml-25m"))


def test_an_unknown_ml1m_age_code_is_refused_naming_the_line(tmp_path):
    folder = ml1m_files(tmp_path / "ml-1m")
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::57::16::70072\n3::M::25::15::55117\n")
    with pytest.raises(DataError, match=r"users.dat: cannot be read as MovieLens-1M \(line 2: age '57' is not one of its codes"):
        resolve_release(tmp_path, fixture_release("ml-1m"), user_features=("age",))


def test_counts_that_differ_from_the_readme_are_refused(tmp_path):
    ml1m_files(tmp_path / "ml-1m")
    with pytest.raises(
        DataError, match=r"ratings.dat: found 4 ratings by 3 users; MovieLens-1M has 1,000,209 ratings, 6,040 users; replace"
    ):
        resolve_release(tmp_path, replace(RELEASES["ml-1m"], url=f"{UNREACHABLE}ml-1m.zip"))


def test_a_missing_release_says_which_archive_to_unzip_where(tmp_path):
    with pytest.raises(DataError) as refused:
        resolve_release(tmp_path / "data", fixture_release("ml-20m"))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'data' / 'ml-20m'}: no MovieLens-20M here and {UNREACHABLE}ml-20m.zip could not be fetched (")
    assert message.endswith(f"download that archive and unzip it into {tmp_path / 'data'}, so that it makes ml-20m/ there")
    assert not (tmp_path / "data" / "ml-20m").exists()


def test_without_download_a_missing_release_is_not_fetched(tmp_path):
    with pytest.raises(DataError, match=r"ml-10M100K: no MovieLens-10M here; evaluate reads the run's data, it does not fetch it"):
        resolve_release(tmp_path / "data", RELEASES["ml-10m"], download=False)
    assert not (tmp_path / "data").exists()


def zipped_release(tmp_path: Path, name: str) -> tuple[Path, str]:
    folder = RELEASES[name].folder
    source = ml1m_files(tmp_path / "src" / folder)
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(source.iterdir()):
            out.write(path, f"{folder}/{path.name}")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_the_archive_is_downloaded_checked_and_unzipped(tmp_path):
    archive, md5 = zipped_release(tmp_path, "ml-1m")
    release = replace(RELEASES["ml-1m"], counts=ReleaseCounts(4, 3), url=archive.as_uri(), archive_md5=md5)
    loaded = resolve_release(tmp_path / "data", release)
    assert loaded.source == "grouplens-download" and len(loaded.interactions) == 4
    assert (tmp_path / "data" / "ml-1m" / "ratings.dat").is_file()


def test_an_archive_with_another_md5_is_refused_and_nothing_unzipped(tmp_path):
    archive, _ = zipped_release(tmp_path, "ml-1m")
    release = replace(RELEASES["ml-1m"], counts=ReleaseCounts(4, 3), url=archive.as_uri(), archive_md5="0" * 32)
    with pytest.raises(DataError, match=r"ml-1m.zip: the download's md5 is [0-9a-f]{32}, not 0{32} as GroupLens publishes it"):
        resolve_release(tmp_path / "data", release)
    assert not (tmp_path / "data" / "ml-1m").exists()


@pytest.mark.parametrize(
    ("variant", "key", "name", "available"),
    [
        ("ml-20m", "user_features", "age", "none (set it to [])"),
        ("ml-1m", "item_features", "tag", "genre, year"),
        ("ml-100k", "item_features", "tag", "genre, year"),
        ("ml-latest-small", "item_features", "genres", "genre, year, tag"),
    ],
)
def test_a_feature_the_variant_lacks_is_one_line_listing_what_it_has(tmp_path, variant, key, name, available):
    with pytest.raises(ConfigError) as refused:
        MovieLensDataModule(str(tmp_path), variant=variant, **{key: [name]})
    title = RELEASES[variant].title if variant in RELEASES else "MovieLens-100K"
    assert str(refused.value) == f"data.{key}: '{name}' is not a {title} feature; available: {available}"


def test_datamodule_loads_the_variant_with_its_features(tmp_path, monkeypatch):
    ml1m_files(tmp_path / "ml-1m")
    monkeypatch.setitem(RELEASES, "ml-1m", fixture_release("ml-1m"))
    data = MovieLensDataModule(str(tmp_path), variant="ml-1m", item_features=["genre"], user_features=["gender"], split="leave_one_out")
    loaded = data.load()
    assert loaded.item_features.values.columns.tolist() == ["genre"] and loaded.user_features.values.columns.tolist() == ["gender"]


@pytest.mark.parametrize("read_size", [1, 2, 3, 5, 64])
def test_double_colons_read_as_tabs_across_any_read_boundary(read_size):
    text = b"1::2:::3::::4\n::x:y::\n:::"
    stream = io.BufferedReader(DoubleColonAsTab(io.BytesIO(text)), buffer_size=max(read_size, 1))
    out = b""
    while chunk := stream.read(read_size):
        out += chunk
    assert out == text.replace(b"::", b"\t")


def test_ml1m_preset_picks_the_variant_with_ml100k_mf_settings(tmp_path):
    ml1m = training_config("experiment=ml1m_mf", run_dir=tmp_path)
    ml100k = training_config("experiment=ml100k_mf", run_dir=tmp_path)
    assert ml1m.data.variant == "ml-1m" and ml100k.data.variant == "ml-100k"
    assert (ml1m.model, ml1m.loss, ml1m.optimizer) == (ml100k.model, ml100k.loss, ml100k.optimizer)


def many_ml1m_users(folder: Path, users: int = 40, items: int = 30) -> Path:
    """A fake ml-1m big enough to split and train on: every user rates 12 items, in the exact .dat formats."""
    folder.mkdir(parents=True, exist_ok=True)
    ratings = [f"{u}::{(u * 7 + k) % items + 1}::{k % 5 + 1}::{978300000 + u * 100 + k}" for u in range(1, users + 1) for k in range(12)]
    (folder / "ratings.dat").write_text("\n".join(ratings) + "\n")
    genres = ("Drama", "Comedy|Romance", "Action|Sci-Fi")
    (folder / "movies.dat").write_text("".join(f"{i}::Movie {i} ({1990 + i % 10})::{genres[i % 3]}\n" for i in range(1, items + 1)))
    (folder / "users.dat").write_text(
        "".join(f"{u}::{'MF'[u % 2]}::{(1, 18, 25, 35)[u % 4]}::{u % 21}::0{u:04d}\n" for u in range(1, users + 1))
    )
    return folder


@pytest.mark.slow
def test_ml1m_preset_trains_on_the_variant_with_its_features(tmp_path, monkeypatch):
    many_ml1m_users(tmp_path / "data" / "ml-1m")
    monkeypatch.setitem(RELEASES, "ml-1m", fixture_release("ml-1m", ratings=480, users=40))
    features = ["data.item_features=[genre,year]", "data.user_features=[age,gender,occupation]", "model.features=true"]
    config = training_config(
        "experiment=ml1m_mf", f"paths.data_dir={tmp_path / 'data'}", *features, "debug=quick", "~logger", run_dir=tmp_path / "run"
    )
    metrics = train(config)
    assert metrics["data_source"] == "grouplens-local"
    assert 0.0 <= metrics["test/ndcg@10"] <= 1.0


@pytest.mark.slow
def test_train_on_a_wrong_ml1m_folder_fails_in_one_line(tmp_path):
    """The entry point as a user runs it: variant -> folder -> parser -> the README's counts -> one line, exit 1."""
    many_ml1m_users(tmp_path / "data" / "ml-1m")
    result = run_module(
        "recsys_lightning.train", "experiment=ml1m_mf", f"paths.data_dir={tmp_path / 'data'}", "debug=quick", f"paths.output_dir={tmp_path}"
    )
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [
        f"error: {tmp_path / 'data' / 'ml-1m' / 'ratings.dat'}: found 480 ratings by 40 users; MovieLens-1M has 1,000,209 ratings, "
        f"6,040 users; replace {tmp_path / 'data' / 'ml-1m'} with a fresh copy of https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    ]
    assert "Traceback" not in result.stderr
