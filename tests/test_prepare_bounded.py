"""prepare read in chunks and split one block of users at a time writes exactly the folder `setup` + `write_prepared`
writes (issue 24, open item 1): same rows, indices, part codes and `row`, for every source and split kind."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hydra.utils import instantiate

from recsys_lightning.errors import ConfigError, DataError
from recsys_lightning.prepare import prepare
from recsys_lightning.prepared import bounded
from recsys_lightning.prepared.folder import PreparedFolder
from recsys_lightning.prepared.merge import DRAWS, RANKS, merge_ranks
from recsys_lightning.prepared.write import write_prepared

from helpers import compose_config

SPLITS = ["ratio", "temporal", "leave_one_out", "cold_items"]


def write_csv(path: Path, *, text_ids: bool, timestamps: bool, ratings: bool, targets: bool, seed: int = 0) -> Path:
    """2,500 rows of 60 users x 120 items with repeated pairs and many equal timestamps."""
    rng = np.random.default_rng(seed)
    rows = 2500
    users, items = rng.integers(0, 60, rows), rng.zipf(1.3, rows) % 120
    columns = {
        "userId": [("007" if u == 0 else "7" if u == 1 else f"u{u}") if text_ids else str(u * 3) for u in users],
        "itemId": [f"i{i:03d}" if text_ids else str(i) for i in items],
    }
    if ratings:
        columns["rating"] = [str(r) for r in rng.integers(1, 6, rows)]
    if timestamps:
        columns["timestamp"] = [str(t) for t in rng.integers(0, 200, rows)]
    if targets:
        columns["target"] = [str(t) for t in (rng.random(rows) > 0.1).astype(int)]
    header = ",".join(columns)
    lines = [",".join(values) for values in zip(*columns.values())]
    path.write_text(header + "\n" + "\n".join(lines) + "\n")
    return path


def csv_source(tmp_path: Path, **options) -> list[str]:
    min_rating = options.pop("min_rating", None)
    path = write_csv(tmp_path / "interactions.csv", **options)
    return ["data=csv", f"data.path={path}", *([f"data.min_rating={min_rating}"] if min_rating is not None else [])]


SOURCES = {
    "text ids, targets, equal timestamps": lambda tmp: csv_source(tmp, text_ids=True, timestamps=True, ratings=True, targets=True),
    "integer ids, no timestamps, no ratings": lambda tmp: csv_source(tmp, text_ids=False, timestamps=False, ratings=False, targets=False),
    "min_rating and targets": lambda tmp: csv_source(tmp, text_ids=False, timestamps=True, ratings=True, targets=True, min_rating=3),
    "synthetic": lambda tmp: ["data=synthetic", "data.num_users=150", "data.num_items=120", "data.num_interactions=3000"],
}


def assert_same_folder(expected: Path, found: Path) -> None:
    """Every table equal (part files may differ in row groups, hence in bytes); the manifest equal but for file records."""
    names = sorted(path.name for path in expected.glob("*.parquet"))
    assert names == sorted(path.name for path in found.glob("*.parquet"))
    for name in names:  # pandas' equals counts NaN (an explicit negative's timestamp) equal to NaN
        expected_table, found_table = pq.read_table(expected / name), pq.read_table(found / name)
        assert expected_table.schema == found_table.schema and expected_table.to_pandas().equals(found_table.to_pandas()), name
    manifests = [json.loads((folder / "manifest.json").read_text()) for folder in (expected, found)]
    for manifest in manifests:
        del manifest["items"]
        for part in manifest["parts"]:
            del part["files"]
    assert manifests[0] == manifests[1]
    assert sorted(path.name for path in found.iterdir()) == sorted(path.name for path in expected.iterdir())


def prepared_both_ways(tmp_path: Path, overrides: list[str], chunk_rows: int, parts: int) -> tuple[Path, Path]:
    cfg = compose_config("prepare", *overrides, f"output={tmp_path / 'bounded'}", f"chunk_rows={chunk_rows}", f"parts={parts}")
    prepare(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    write_prepared(datamodule, tmp_path / "in_memory", parts)
    return tmp_path / "in_memory", tmp_path / "bounded"


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("source", SOURCES)
def test_bounded_prepare_writes_the_single_process_split_exactly(source, split, tmp_path):
    overrides = [*SOURCES[source](tmp_path), f"data.split={split}", "seed=7"]
    expected, found = prepared_both_ways(tmp_path, overrides, chunk_rows=97, parts=3)
    assert_same_folder(expected, found)
    share = PreparedFolder.open(found).read_share(0, 1)  # the reader takes a part of many row groups
    assert len(share) == sum(pq.read_metadata(path).num_rows for path in found.glob("part-*.parquet"))


def test_movielens_prepared_in_chunks_is_the_single_process_split(tmp_path):
    expected, found = prepared_both_ways(tmp_path, ["data=movielens"], chunk_rows=7000, parts=3)
    assert_same_folder(expected, found)
    assert pq.read_metadata(found / "part-00000.parquet").num_row_groups > 1  # written a block at a time


def test_chunked_draws_of_the_split_stream_are_one_calls_draws():
    whole = np.random.default_rng(12345).random(10_001)
    stream = np.random.default_rng(12345)
    pieces = np.concatenate([stream.random(size) for size in (1, 0, 97, 3, 9_900)])
    np.testing.assert_array_equal(pieces, whole)


def test_merged_ranks_are_the_global_order_of_every_run(tmp_path):
    rng = np.random.default_rng(0)
    records = np.zeros(1000, bounded.SOURCE_ROW)
    records["timestamp"] = rng.integers(0, 30, 1000)  # many equal timestamps: the source row decides
    records["source_row"] = rng.permutation(1000)
    runs = []
    for k, rows in enumerate(np.array_split(records[rng.permutation(1000)], 7)):
        runs.append(tmp_path / f"run{k}")
        bounded._by_key(rows).tofile(runs[-1])
    assert merge_ranks(runs, bounded.SOURCE_ROW, memory_rows=20, draws=np.random.default_rng(3)) == 1000
    merged = np.concatenate([np.fromfile(run, bounded.SOURCE_ROW) for run in runs])
    ranks = np.concatenate([np.fromfile(f"{run}{RANKS}", np.int64) for run in runs])
    order = np.lexsort((merged["source_row"], merged["timestamp"]))
    np.testing.assert_array_equal(ranks[order], np.arange(1000))
    draws = np.concatenate([np.fromfile(f"{run}{DRAWS}", np.float64) for run in runs])
    np.testing.assert_array_equal(draws[order], np.random.default_rng(3).random(1000))


@pytest.mark.parametrize("value", [0, 15, "many"])
def test_a_bad_chunk_rows_is_refused_before_any_data_is_read(value, monkeypatch):
    monkeypatch.setattr("recsys_lightning.prepare.build_datamodule", lambda *args: pytest.fail("data read before the checks"))
    with pytest.raises(ConfigError, match=f"chunk_rows={value}: must be an integer >= 16"):
        prepare(compose_config("prepare", "output=x", f"chunk_rows={value}"))


def test_a_failure_midway_leaves_no_folder(tmp_path, monkeypatch):
    def fails(self):
        assert list((self.work).iterdir())  # working files were written
        raise DataError("stopped in the split")

    monkeypatch.setattr(bounded._Preparation, "_split_blocks", fails)
    cfg = compose_config("prepare", *SOURCES["synthetic"](tmp_path), f"output={tmp_path / 'out'}", "chunk_rows=97")
    with pytest.raises(DataError, match="stopped in the split"):
        prepare(cfg)
    assert list(tmp_path.iterdir()) == []


def test_a_source_whose_every_row_is_a_negative_is_refused_and_writes_nothing(tmp_path):
    (tmp_path / "n.csv").write_text("userId,itemId,target\n" + "".join(f"u{k},i{k},0\n" for k in range(50)))
    cfg = compose_config("prepare", "data=csv", f"data.path={tmp_path / 'n.csv'}", f"output={tmp_path / 'out'}", "chunk_rows=16")
    with pytest.raises(DataError, match="every row has target 0"):
        prepare(cfg)
    assert list(tmp_path.iterdir()) == [tmp_path / "n.csv"]


def test_titles_of_an_items_file_are_written_as_setup_reads_them(tmp_path):
    overrides = csv_source(tmp_path, text_ids=False, timestamps=True, ratings=True, targets=False)
    (tmp_path / "items.csv").write_text("itemId,title\n" + "".join(f"{item},Title {item}\n" for item in (0, 5, 17, 200)))
    expected, found = prepared_both_ways(tmp_path, [*overrides, f"data.items_path={tmp_path / 'items.csv'}"], chunk_rows=97, parts=2)
    assert_same_folder(expected, found)
    titles = pq.read_table(found / "items.parquet").column("title").to_pylist()
    assert titles[:2] == ["Title 0", ""] and "Title 17" in titles


def write_split_file(path: Path, *, users: int, items: int, rows: int, text_ids: bool, timestamps: bool, targets: bool, seed: int) -> Path:
    """`rows` rows of users 0..`users`-1 and items 0..`items`-1 (past train's: ids that train lacks), with repeated
    pairs and equal timestamps; text ids include `007` and `7`."""
    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, users, rows), rng.zipf(1.3, rows) % items
    columns = {
        "userId": [("007" if u == 0 else "7" if u == 1 else f"u{u}") if text_ids else str(u * 3) for u in user],
        "itemId": [f"i{i:03d}" if text_ids else str(i) for i in item],
        "rating": [str(r) for r in rng.integers(1, 6, rows)],
    }
    if timestamps:
        columns["timestamp"] = [str(t) for t in rng.integers(0, 40, rows)]
    if targets:
        columns["target"] = [str(t) for t in (rng.random(rows) > 0.15).astype(int)]
    lines = [",".join(values) for values in zip(*columns.values())]
    path.write_text(",".join(columns) + "\n" + "\n".join(lines) + "\n")
    return path


def pre_split_source(tmp: Path, *, text_ids: bool, timestamps: bool, test: bool, min_rating: int | None = None) -> list[str]:
    """Train of 40 users and 60 items; valid and test of 46 users and 66 items, so some held-out rows have a
    user or item absent from train; pairs repeat within each file and across files. Train and valid have
    targets (valid's negatives must not reach training), test has none."""
    options = {"text_ids": text_ids, "timestamps": timestamps}
    train = write_split_file(tmp / "train.csv", users=40, items=60, rows=1500, targets=True, seed=0, **options)
    valid = write_split_file(tmp / "valid.csv", users=46, items=66, rows=400, targets=True, seed=1, **options)
    overrides = ["data=csv", "data.path=null", f"data.train_path={train}", f"data.valid_path={valid}"]
    if test:
        overrides.append(
            f"data.test_path={write_split_file(tmp / 'test.csv', users=46, items=66, rows=400, targets=False, seed=2, **options)}"
        )
    return overrides + ([f"data.min_rating={min_rating}"] if min_rating is not None else [])


PRE_SPLIT_SOURCES = {
    "text ids, equal timestamps, a test file": lambda tmp: pre_split_source(tmp, text_ids=True, timestamps=True, test=True),
    "integer ids, no timestamps, min_rating": lambda tmp: pre_split_source(tmp, text_ids=False, timestamps=False, test=False, min_rating=3),
    "min_rating, a test file": lambda tmp: pre_split_source(tmp, text_ids=True, timestamps=True, test=True, min_rating=2),
}


@pytest.mark.parametrize("split", ["ratio", "cold_items"])  # the files' parts are used whatever data.split says
@pytest.mark.parametrize("source", PRE_SPLIT_SOURCES)
def test_bounded_prepare_of_pre_split_files_writes_the_single_process_parts_exactly(source, split, tmp_path):
    overrides = [*PRE_SPLIT_SOURCES[source](tmp_path), f"data.split={split}", "data.split_ratios=[0.98,0.01,0.01]"]
    expected, found = prepared_both_ways(tmp_path, overrides, chunk_rows=97, parts=3)
    assert_same_folder(expected, found)
    codes = np.concatenate([pq.read_table(path).column("part").to_numpy() for path in found.glob("part-*.parquet")])
    assert {0, 1} <= set(codes) and len(codes) < sum(1 for _ in open(tmp_path / "train.csv")) + 400  # held-out rows were left out


def test_pre_split_parts_of_users_without_a_row_are_written_as_setup_writes_them(tmp_path):
    overrides = PRE_SPLIT_SOURCES["text ids, equal timestamps, a test file"](tmp_path)
    datamodule = instantiate(compose_config("prepare", *overrides, "output=unused").data)
    datamodule.setup("fit")
    parts = datamodule.num_users  # one user per part: a user whose every row is held out and left out has an empty part
    expected, found = prepared_both_ways(tmp_path, overrides, chunk_rows=97, parts=parts)
    assert_same_folder(expected, found)
    assert min(pq.read_metadata(path).num_rows for path in found.glob("part-*.parquet")) == 0


@pytest.mark.parametrize(
    "files, on_overlap, message",
    [
        ({"test": "userId,itemId\nu1,i2\nu1,i2\n"}, "drop", "left: of 2 test rows, 1 dropped before splitting .* 1 also occur in valid;"),
        ({"valid": "userId,itemId\nu9,i1\n"}, "drop", "no validation interaction is left; left out of valid: 1 with a user or item absent"),
        ({}, "error", "valid 0 and test 1 .user, item. pairs also in train, test 1 also in valid .e.g. user 'u1', item 'i1'."),
    ],
)
def test_pre_split_files_prepared_in_chunks_fail_as_setup_does(files, on_overlap, message, tmp_path):
    contents = {"train": "userId,itemId\nu1,i1\nu2,i2\nu2,i1\n", "valid": "userId,itemId\nu1,i2\n", "test": "userId,itemId\nu1,i1\nu1,i2\n"}
    contents.update(files)
    for name, text in contents.items():
        (tmp_path / f"{name}.csv").write_text(text)
    overrides = [
        "data=csv",
        "data.path=null",
        *(f"data.{name}_path={tmp_path / name}.csv" for name in contents),
        f"data.on_overlap={on_overlap}",
    ]
    cfg = compose_config("prepare", *overrides, f"output={tmp_path / 'out'}", "chunk_rows=16")
    with pytest.raises(DataError, match=message) as in_chunks:
        prepare(cfg)
    with pytest.raises(DataError) as whole:
        instantiate(cfg.data).setup("fit")
    assert str(in_chunks.value) == str(whole.value)
    assert not (tmp_path / "out").exists()


def k_core_source(tmp: Path) -> list[str]:
    """Integer ids but for user `007`, whose one row k-core filtering drops: the ids left are integers both ways."""
    path = write_csv(tmp / "interactions.csv", text_ids=False, timestamps=True, ratings=True, targets=True)
    with open(path, "a") as handle:
        handle.write("007,5,4,3,1\n")
    return ["data=csv", f"data.path={path}"]


K_CORE_SOURCES = {
    "one file, text ids": lambda tmp: csv_source(tmp, text_ids=True, timestamps=True, ratings=True, targets=True),
    "one file, an id only k-core drops is not an integer": k_core_source,
    "pre-split files, min_rating": lambda tmp: pre_split_source(tmp, text_ids=True, timestamps=True, test=True, min_rating=2),
}


@pytest.mark.parametrize("thresholds", [(30, 8), (2, 20)])
@pytest.mark.parametrize("source", K_CORE_SOURCES)
def test_bounded_prepare_with_k_core_filtering_writes_the_single_process_split_exactly(source, thresholds, tmp_path):
    min_user, min_item = thresholds
    overrides = [*K_CORE_SOURCES[source](tmp_path), f"data.min_user_interactions={min_user}", f"data.min_item_interactions={min_item}"]
    expected, found = prepared_both_ways(tmp_path, overrides, chunk_rows=97, parts=3)
    assert_same_folder(expected, found)
    unfiltered = instantiate(compose_config("prepare", *K_CORE_SOURCES[source](tmp_path), "output=unused").data)
    unfiltered.setup("fit")
    train_rows = sum(part["train"] for part in json.loads((found / "manifest.json").read_text())["parts"])
    assert 0 < train_rows < len(unfiltered.split.train)  # k-core dropped some


def test_k_core_filtering_that_removes_every_row_is_refused_in_chunks_as_setup_refuses_it(tmp_path):
    overrides = [*csv_source(tmp_path, text_ids=True, timestamps=True, ratings=True, targets=False), "data.min_user_interactions=10000"]
    cfg = compose_config("prepare", *overrides, f"output={tmp_path / 'out'}", "chunk_rows=97")
    with pytest.raises(DataError, match="removed every interaction") as in_chunks:
        prepare(cfg)
    with pytest.raises(DataError) as whole:
        instantiate(cfg.data).setup("fit")
    assert str(in_chunks.value) == str(whole.value) and not (tmp_path / "out").exists()


def test_a_source_that_changes_between_its_two_readings_is_refused(tmp_path):
    path = write_csv(tmp_path / "interactions.csv", text_ids=True, timestamps=True, ratings=True, targets=False)
    datamodule = instantiate(compose_config("prepare", "data=csv", f"data.path={path}", "output=unused").data)
    chunked = datamodule.load_chunks(97)
    readings = []

    def chunks():
        readings.append(1)
        for chunk in chunked.chunks():
            yield chunk.assign(user_id=pd.Categorical(["new"] * len(chunk))) if len(readings) == 2 else chunk

    changed = dataclasses.replace(chunked, chunks=chunks)
    with pytest.raises(DataError, match="changed while prepare read it"):
        bounded.write_prepared_bounded(datamodule, changed, tmp_path / "out", 1, 97)
    assert not (tmp_path / "out").exists()
