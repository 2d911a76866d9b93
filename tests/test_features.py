"""Item and user features (CSV, MovieLens, indexed once by the DataModule) and the cold-item split."""

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_lightning.data.csv import CsvDataModule
from recsys_lightning.data.features import FeatureColumns, FeatureTable, index_features
from recsys_lightning.data.interactions import Interactions
from recsys_lightning.data.movielens import GENRES, ExpectedContent, MovieLensDataModule, ratings_sha256, resolve_movielens
from recsys_lightning.data.split import split_interactions
from recsys_lightning.errors import ConfigError, DataError
from recsys_lightning.train import train

from helpers import ROOT, FrameDataModule, random_interactions, training_config

UNREACHABLE = "http://127.0.0.1:9/ml-100k.zip"  # discard port: connection refused at once


def interactions_csv(tmp_path: Path) -> Path:
    """Users 100-105, items 1000-1011, ten interactions each: enough for a ratio split."""
    path = tmp_path / "interactions.csv"
    random_interactions(num_users=6, num_items=12, per_user=10).rename(columns={"user_id": "userId", "item_id": "itemId"}).to_csv(
        path, index=False
    )
    return path


def csv_features(tmp_path: Path, items: str, **options) -> FeatureTable:
    """The item FeatureTable a CsvDataModule builds over `interactions_csv` with this items file."""
    (tmp_path / "items.csv").write_text(items)
    datamodule = CsvDataModule(path=str(interactions_csv(tmp_path)), items_path=str(tmp_path / "items.csv"), **options)
    datamodule.setup("fit")
    return datamodule.training_data.item_features


def features_of(table: FeatureTable, row: int) -> list[str]:
    return [table.names[feature] for feature in table.indices[table.indptr[row] : table.indptr[row + 1]].tolist()]


def columns(ids: list[str], **values: list[str]) -> FeatureColumns:
    return FeatureColumns("items.csv", pd.Series(ids, dtype=str), pd.DataFrame(values, dtype=str), sep="|", first_line=2)


# ---- CSV features ----


def test_single_and_multi_valued_columns_become_one_vocabulary_of_column_value_names(tmp_path):
    items = "itemId,title,genre,year\n1000,A,Comedy|Action,1995\n1001,B,Drama,1995\n1002,C,Action| Drama |Action,1990\n"
    table = csv_features(tmp_path, items, item_features=["genre", "year"])
    assert table.names == ["genre=Action", "genre=Comedy", "genre=Drama", "year=1990", "year=1995"]
    assert (table.num_entities, table.num_features) == (12, 5)
    assert features_of(table, 0) == ["genre=Action", "genre=Comedy", "year=1995"]
    assert features_of(table, 2) == ["genre=Action", "genre=Drama", "year=1990"]  # spaces trimmed, repeats once
    for row in range(table.num_entities):  # sorted and distinct within each row
        ids = table.indices[table.indptr[row] : table.indptr[row + 1]]
        assert torch.equal(ids, ids.unique())


def test_without_a_feature_separator_a_cell_is_one_value(tmp_path):
    table = csv_features(tmp_path, "itemId,title,genre\n1000,A,Comedy|Action\n", item_features=["genre"], feature_sep=None)
    assert table.names == ["genre=Comedy|Action"]


def test_empty_cells_give_no_feature_and_any_other_value_is_a_category(tmp_path):
    items = "itemId,title,genre,year\n1000,A,,\n1001,B,unknown,NA\n1002,C,|Drama|,\n"
    table = csv_features(tmp_path, items, item_features=["genre", "year"])
    assert table.names == ["genre=Drama", "genre=unknown", "year=NA"]
    assert (
        features_of(table, 0) == [] and features_of(table, 1) == ["genre=unknown", "year=NA"] and features_of(table, 2) == ["genre=Drama"]
    )


def test_items_the_file_lacks_have_no_features_and_rows_of_other_ids_are_ignored(tmp_path, caplog):
    items = "itemId,title,genre\n1000,A,Drama\n1003,B,Comedy\n5000,Z,Western\n7,Q,Horror\n"
    with caplog.at_level(logging.INFO, logger="recsys_lightning.data.features"):
        table = csv_features(tmp_path, items, item_features=["genre"])
    assert table.names == ["genre=Comedy", "genre=Drama"]  # Western and Horror belong to no known item
    assert torch.equal(torch.diff(table.indptr), torch.tensor([1, 0, 0, 1] + [0] * 8))
    (line,) = [record.getMessage() for record in caplog.records if record.name == "recsys_lightning.data.features"]
    assert "2 of 12 items have some, 10 have no row; 2 rows of ids not in the interactions ignored" in line


def test_user_features_come_from_the_users_file(tmp_path):
    (tmp_path / "users.csv").write_text("userId,age_group,country\n100,30s,FR\n105,20s,\n")
    datamodule = CsvDataModule(
        path=str(interactions_csv(tmp_path)), users_path=str(tmp_path / "users.csv"), user_features=["country", "age_group"]
    )
    datamodule.setup("fit")
    table = datamodule.training_data.user_features
    assert table.names == ["country=FR", "age_group=20s", "age_group=30s"]  # columns in the order named
    assert features_of(table, 0) == ["country=FR", "age_group=30s"] and features_of(table, 5) == ["age_group=20s"]
    assert datamodule.training_data.item_features is None


def test_integer_ids_match_only_their_exact_spelling():
    table = index_features(columns(["007", "7", "8.0", "+9", "9"], genre=["A", "B", "C", "D", "E"]), np.array([7, 8, 9]), "item")
    assert [features_of(table, row) for row in range(3)] == [["genre=B"], [], ["genre=E"]]


def test_text_ids_match_only_their_exact_spelling():
    table = index_features(columns(["7", "007", " x", "x"], genre=["A", "B", "C", "D"]), np.array(["007", "x"], dtype=object), "item")
    assert [features_of(table, row) for row in range(2)] == [["genre=B"], ["genre=D"]]


def test_a_repeated_identical_row_is_fine_but_a_conflicting_one_is_a_one_line_error():
    table = index_features(columns(["1", "1"], genre=["A|B", "A|B"]), np.array([1]), "item")
    assert features_of(table, 0) == ["genre=A", "genre=B"]
    with pytest.raises(
        DataError, match=r"^items.csv: line 4: item 1 is listed again \(first on line 2\) with another 'genre' \('B', before 'A'\)"
    ):
        index_features(columns(["1", "2", "1"], genre=["A", "C", "B"]), np.array([1, 2]), "item")


MALFORMED = {
    # name: (users file bytes, None for no file; message)
    "missing_file": (None, r"users.csv: file not found; point data.users_path at a file with columns 'userId', 'country'"),
    "missing_column": (
        b"userId,age,nation\n100,3,FR\n",
        r"no column 'country'; columns found: 'userId', 'age', 'nation'. Set data.user_features",
    ),
    "missing_id_column": (b"user,country\n100,FR\n", r"no column 'userId'.*Set data.user_col to the right one"),
    "empty_file": (b"", r"no header line found"),
    "open_quote": (b'userId,country\n100,"FR\n101,DE\n', r"row starting on line 2 opens a quoted field that is never closed"),
    "not_utf8": (b"userId,country\n100,Fran\xe7e\n", r"not utf-8 text .*set data.encoding"),
    "conflict": (
        b"userId,country\n100,FR\n101,DE\n100,IT\n",
        r"line 4: user 100 is listed again \(first on line 2\) with another 'country'",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_bad_users_file_is_one_line_naming_file_and_fix(tmp_path, case):
    content, message = MALFORMED[case]
    users = tmp_path / "users.csv"
    if content is not None:
        users.write_bytes(content)
    datamodule = CsvDataModule(path=str(interactions_csv(tmp_path)), users_path=str(users), user_features=["country"])
    with pytest.raises(DataError, match=message) as caught:
        datamodule.setup("fit")
    assert str(caught.value).startswith(str(users)) and "\n" not in str(caught.value) and len(str(caught.value)) < 400


def test_an_items_file_without_a_feature_column_names_it(tmp_path):
    with pytest.raises(
        DataError, match=r"items.csv: no column 'genre'; columns found: 'itemId', 'title', 'genres'. Set data.item_features"
    ):
        csv_features(tmp_path, "itemId,title,genres\n1000,A,Drama\n", item_features=["genre"])


@pytest.mark.parametrize("side", ["item", "user"])
def test_features_without_their_file_are_a_config_error(tmp_path, side):
    with pytest.raises(ConfigError, match=rf"^data.{side}_features=\['a'\] needs data.{side}s_path"):
        CsvDataModule(path=str(tmp_path / "x.csv"), **{f"{side}_features": ["a"]})


def test_mean_matrix_rows_sum_to_one_or_zero_and_average_feature_vectors():
    table = FeatureTable(names=["a", "b", "c"], indptr=torch.tensor([0, 2, 2, 3]), indices=torch.tensor([0, 2, 1]))
    mean = table.mean_matrix()
    assert mean.is_sparse and mean.shape == (3, 3) and mean.dtype == torch.float32
    assert torch.equal(mean.to_dense().sum(1), torch.tensor([1.0, 0.0, 1.0]))
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 4.0], [3.0, 2.0]])
    assert torch.equal(torch.sparse.mm(mean, embeddings), torch.tensor([[2.0, 1.0], [0.0, 0.0], [0.0, 4.0]]))


# ---- MovieLens features ----

ML_RATINGS = [(1, 10, 5, 881250949), (1, 20, 3, 881250950), (2, 10, 4, 881250951), (3, 30, 1, 881250952)]
ML_COUNTS = ExpectedContent(4, 3, 3, ratings_sha256(pd.DataFrame(ML_RATINGS, columns=["user_id", "item_id", "rating", "timestamp"])))


def grouplens_with_users(folder: Path, users: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ML_RATINGS))
    genres = {10: ("Animation", "Children's", "Comedy"), 20: ("Drama",), 30: ("Action",)}
    flags = {item: "|".join("1" if genre in on else "0" for genre in GENRES) for item, on in genres.items()}
    (folder / "u.item").write_text(
        "".join(f"{i}|T{i}|{d}||http://x|{flags[i]}\n" for i, d in ((10, "01-Jan-1995"), (20, ""), (30, "12-Oct-1977")))
    )
    (folder / "u.user").write_text(users)
    return folder


def test_grouplens_layout_gives_genre_year_and_user_features(tmp_path):
    grouplens_with_users(tmp_path / "ml-100k", "1|24|M|technician|85711\n2|53|F|other|94043\n3|7|M|student|32067\n")
    loaded = resolve_movielens(
        tmp_path, url=UNREACHABLE, expected=ML_COUNTS, item_features=["genre", "year"], user_features=["age", "gender"]
    )
    items = index_features(loaded.item_features, np.array([10, 20, 30]), "item")
    assert features_of(items, 0) == ["genre=Animation", "genre=Children's", "genre=Comedy", "year=1995"]
    assert features_of(items, 1) == ["genre=Drama"] and features_of(items, 2) == ["genre=Action", "year=1977"]
    users = index_features(loaded.user_features, np.array([1, 2, 3]), "user")
    assert users.names == ["age=0s", "age=20s", "age=50s", "gender=F", "gender=M"]
    assert features_of(users, 2) == ["age=0s", "gender=M"]


@pytest.mark.parametrize(
    ("users", "message"),
    [
        (
            "1|24|M|technician|85711\n2|old|F|other|94043\n3|7|M|student|32067\n",
            r"u.user: cannot be read as MovieLens-100K \(line 2: age 'old'",
        ),
        ("1|24|M|technician|85711\n2|53\n3|7|M|student|32067\n", r"\(line 2: a cell is empty or missing\)"),
        (
            "1|24|M|technician|85711\n1|53|F|other|94043\n3|7|M|student|32067\n",
            r"u.user: lists 3 rows with 2 distinct user ids; ML-100K has 3",
        ),
        (None, r"u.user: not found; user features need the users file"),
    ],
    ids=["age_not_a_number", "short_line", "repeated_user", "no_users_file"],
)
def test_a_bad_movielens_users_file_is_one_line(tmp_path, users, message):
    folder = grouplens_with_users(tmp_path / "ml-100k", users or "")
    if users is None:
        (folder / "u.user").unlink()
    with pytest.raises(DataError, match=message) as caught:
        resolve_movielens(tmp_path, url=UNREACHABLE, expected=ML_COUNTS, user_features=["age", "gender"])
    assert "\n" not in str(caught.value) and str(caught.value).endswith(f"delete {folder} to fetch a fresh copy")


def test_unknown_movielens_feature_is_a_config_error_listing_the_available_ones():
    with pytest.raises(ConfigError, match=r"^data.item_features: 'genres' is not a MovieLens-100K feature; available: genre, year$"):
        MovieLensDataModule("data", item_features=["genre", "genres"])
    with pytest.raises(ConfigError, match=r"available: age, gender, occupation$"):
        MovieLensDataModule("data", user_features=["zip_code"])


def test_ml100k_vocabularies_and_shapes():
    datamodule = MovieLensDataModule(str(ROOT / "data"), item_features=["genre", "year"], user_features=["age", "gender", "occupation"])
    datamodule.setup("fit")
    items, users = datamodule.training_data.item_features, datamodule.training_data.user_features
    assert (items.num_entities, users.num_entities) == (1682, 943)
    count = lambda table, column: sum(name.startswith(f"{column}=") for name in table.names)  # noqa: E731
    assert count(items, "genre") == 19 and "genre=Film-Noir" in items.names and count(items, "year") >= 70
    assert [name for name in users.names if name.startswith("age=")] == [f"age={decade}s" for decade in range(0, 80, 10)]
    assert (count(users, "gender"), count(users, "occupation")) == (2, 21)
    assert (torch.diff(users.indptr) == 3).all()  # every user has one of each
    toy_story = datamodule.training_data.catalogue.item_index(1)
    assert features_of(items, toy_story) == ["genre=Animation", "genre=Children's", "genre=Comedy", "year=1995"]


def test_ml100k_years_are_four_digits_as_the_grouplens_reader_keeps_them():
    """RecBole's copy holds release_year "unkonwn" (the unknown movie) and "V" (a video whose year stayed in its
    title, "Land Before Time III: ... (1995)"): no year for the first, the title's for the second."""
    datamodule = MovieLensDataModule(str(ROOT / "data"), item_features=["year"])
    datamodule.setup("fit")
    items, catalogue = datamodule.training_data.item_features, datamodule.training_data.catalogue
    assert all(re.fullmatch(r"year=\d{4}", name) for name in items.names)
    assert features_of(items, catalogue.item_index(267)) == [] and features_of(items, catalogue.item_index(1412)) == ["year=1995"]


# ---- the cold-item split ----


@pytest.fixture
def interactions(small_frame) -> Interactions:
    return Interactions.from_frame(small_frame)


def test_cold_items_are_held_out_with_every_interaction(interactions):
    split = split_interactions(interactions, "cold_items", (0.6, 0.2, 0.2), seed=3)
    rows = np.concatenate([split.train, split.valid, split.test])
    assert np.array_equal(np.sort(rows), np.arange(len(interactions)))
    items = [set(interactions.items[part].tolist()) for part in (split.train, split.valid, split.test)]
    assert not items[0] & items[1] and not items[0] & items[2] and not items[1] & items[2]
    held_out = items[1] | items[2]
    assert not np.isin(interactions.items[split.train], list(held_out)).any()
    assert np.isin(interactions.items, list(held_out)).sum() == len(split.valid) + len(split.test)
    # 60 items, all interacted with: 36 / 12 / 12 items
    assert [len(part) for part in items] == [36, 12, 12]


def test_cold_item_split_is_seeded(interactions):
    first, again, other = (split_interactions(interactions, "cold_items", seed=seed) for seed in (5, 5, 6))
    assert np.array_equal(first.valid, again.valid) and np.array_equal(first.test, again.test)
    assert not np.array_equal(first.test, other.test)


def test_cold_item_split_with_an_empty_part_says_so():
    frame = random_interactions(num_users=5, num_items=4, per_user=3)
    with pytest.raises(DataError, match=r"cold_items .* gives 3 train, 1 valid and 0 test items of 4; each part needs at least one"):
        split_interactions(Interactions.from_frame(frame), "cold_items")


def test_cold_items_are_ranked_and_users_without_training_rows_are_kept(small_frame, caplog):
    plain = FrameDataModule(small_frame, split="cold_items", seed=1)
    plain.setup("fit")
    valid_items = np.unique(plain.interactions.items[plain.split.valid])
    # One more user, only with held-out items: the item shuffle depends on the items alone, so it is unchanged.
    loner = pd.DataFrame({"user_id": 999, "item_id": plain.interactions.item_ids[valid_items[:2]], "rating": 5.0, "timestamp": 0})
    datamodule = FrameDataModule(pd.concat([small_frame, loner], ignore_index=True), split="cold_items", seed=1)
    with caplog.at_level(logging.WARNING, logger="recsys_lightning.data.split"):
        datamodule.setup("fit")
    assert "1 users interacted only with held-out items" in caplog.text
    loner_index = datamodule.training_data.catalogue.user_index(999)
    assert datamodule.train_positives.counts()[loner_index] == 0
    assert loner_index in datamodule.validation_users().tolist()
    chunks = datamodule.val_dataloader().dataset.chunks
    ranked = torch.unique(torch.cat([chunk.heldout_items for chunk in chunks]))
    assert torch.equal(ranked, torch.from_numpy(valid_items))  # no held-out item is dropped
    assert (datamodule.training_data.positives.csr.counts_per_item()[ranked] == 0).all()


def test_features_cover_cold_items(tmp_path):
    """Every interaction item gets its row, held-out ones too: what a model scores a cold item by."""
    lines = "".join(f"{item},T,g{item % 3}\n" for item in range(1000, 1012))
    (tmp_path / "items.csv").write_text("itemId,title,genre\n" + lines)
    datamodule = CsvDataModule(
        path=str(interactions_csv(tmp_path)), items_path=str(tmp_path / "items.csv"), item_features=["genre"], split="cold_items"
    )
    datamodule.setup("fit")
    held_out = np.unique(datamodule.interactions.items[np.concatenate([datamodule.split.valid, datamodule.split.test])])
    assert len(held_out) and (torch.diff(datamodule.training_data.item_features.indptr)[held_out] == 1).all()


def test_frame_sources_without_features_hand_over_none(small_frame):
    datamodule = FrameDataModule(small_frame)
    datamodule.setup("fit")
    assert datamodule.training_data.item_features is None and datamodule.training_data.user_features is None


@pytest.mark.slow
def test_a_model_without_features_neither_reads_nor_logs_them(tmp_path, caplog):
    """`model.features=false` with data.item_features set (a preset's, e.g. ml100k_cold_items): nothing is read for nothing."""
    frame = random_interactions(num_users=40, num_items=60, per_user=15).rename(columns={"user_id": "userId", "item_id": "itemId"})
    frame.to_csv(tmp_path / "interactions.csv", index=False)
    pd.DataFrame({"itemId": range(1000, 1060), "title": "a title", "genre": "Drama"}).to_csv(tmp_path / "items.csv", index=False)
    data = [f"data.path={tmp_path / 'interactions.csv'}", f"data.items_path={tmp_path / 'items.csv'}", "data.item_features=[genre]"]
    config = training_config("data=csv", *data, "model.features=false", "debug=quick", "~logger", run_dir=tmp_path / "run")
    with caplog.at_level(logging.INFO):
        train(config)
    messages = [record.getMessage() for record in caplog.records]
    assert "model.features is off: data.item_features not read" in messages
    assert not [message for message in messages if message.startswith("item features")]
