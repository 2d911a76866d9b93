"""prepare writes exactly the single-process split as user-sharded Parquet, and a prepared folder is read back
only when every file is the one its manifest records (issue 24, items 1 and 4)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hydra.utils import instantiate

from recsys_lightning.data.csv import CsvDataModule
from recsys_lightning.errors import ConfigError, DataError
from recsys_lightning.prepare import prepare
from recsys_lightning.prepared import write
from recsys_lightning.prepared.datamodule import PreparedDataModule
from recsys_lightning.prepared.folder import PreparedFolder
from recsys_lightning.prepared.share import NEGATIVE, TEST, TRAIN, VALID
from recsys_lightning.prepared.write import write_prepared
from recsys_lightning.runs.atomic import WriteFailed
from recsys_lightning.runs.checkpoint_file import catalogue_from_checkpoint

from helpers import ROOT, compose_config, made_then_interrupted, run_module


@pytest.fixture(scope="module")
def movielens():
    datamodule = instantiate(compose_config("prepare", "output=unused").data)
    datamodule.setup("fit")
    return datamodule


@pytest.fixture(scope="module")
def prepared(movielens, tmp_path_factory):
    """ML-100K prepared in 1 and in 3 parts."""
    root = tmp_path_factory.mktemp("prepared")
    for parts in (1, 3):
        write_prepared(movielens, root / f"parts{parts}", parts)
    return root


@pytest.fixture
def three_parts(prepared, tmp_path) -> Path:
    """A copy of the 3-part folder a test may damage."""
    return Path(shutil.copytree(prepared / "parts3", tmp_path / "parts3"))


def expected_rows(datamodule) -> dict[str, np.ndarray]:
    """The split's rows in single-process order, with their part codes."""
    split, interactions = datamodule.split, datamodule.interactions
    rows = np.concatenate([split.train, split.valid, split.test])
    codes = np.repeat(np.array([TRAIN, VALID, TEST], np.int8), [len(split.train), len(split.valid), len(split.test)])
    order = np.argsort(rows)
    rows, codes = rows[order], codes[order]
    return {
        "users": interactions.users[rows],
        "items": interactions.items[rows],
        "ratings": interactions.ratings[rows],
        "timestamps": interactions.timestamps[rows],
        "parts": codes,
    }


@pytest.mark.parametrize("parts", [1, 3])
def test_shares_of_every_rank_together_are_the_single_process_split_exactly(movielens, prepared, parts):
    folder = PreparedFolder.open(prepared / f"parts{parts}")
    shares = [folder.read_share(rank, parts) for rank in range(parts)]
    for share in shares:  # each user's whole history is on one rank, and only there
        assert share.users.min() >= share.first_user and share.users.max() < share.first_user + share.num_users
    assert [share.first_user for share in shares] == [0, *np.cumsum([share.num_users for share in shares])[:-1].tolist()]
    expected = expected_rows(movielens)
    assert sum(len(share) for share in shares) == len(expected["users"]) == 100_000
    whole = folder.read_share(0, 1)
    for name, column in expected.items():
        np.testing.assert_array_equal(getattr(whole, name), column)
        # the ranks' rows, put back in single-process order, are those rows
        union = np.concatenate([getattr(share, name) for share in shares])
        positions = np.argsort(np.concatenate([np.flatnonzero(np.isin(expected["users"], np.unique(s.users))) for s in shares]))
        np.testing.assert_array_equal(union[positions], column)
    np.testing.assert_array_equal(np.concatenate([share.user_ids for share in shares]), movielens.interactions.user_ids)
    assert folder.train_rows_per_rank(parts) == [int((share.parts == TRAIN).sum()) for share in shares]
    assert sum(folder.train_rows_per_rank(parts)) == len(movielens.split.train)
    assert folder.valid_users == int((movielens.valid_positives.counts() > 0).sum())


def test_parts_are_balanced_by_interaction_count(prepared):
    rows = [part.rows for part in PreparedFolder.open(prepared / "parts3").parts]
    assert max(rows) - min(rows) < 0.01 * sum(rows)


def test_items_and_catalogue_are_the_datamodules(movielens, prepared):
    folder = PreparedFolder.open(prepared / "parts3")
    expected = movielens.training_data.catalogue
    np.testing.assert_array_equal(folder.item_ids, movielens.interactions.item_ids)
    assert folder.titles == expected.titles and folder.titles[0] == "Toy Story (1995)"
    np.testing.assert_array_equal(folder.item_train_counts, expected.popularity.numpy())
    catalogue = folder.catalogue()
    assert catalogue.user_ids.equals(expected.user_ids) and catalogue.item_ids.equals(expected.item_ids)
    for name in ("indptr", "indices", "values"):
        assert torch.equal(getattr(catalogue.seen, name), getattr(expected.seen, name))
    assert torch.equal(catalogue.popularity, expected.popularity) and catalogue.titles == expected.titles


def test_manifest_records_counts_split_and_seed(movielens, prepared):
    manifest = json.loads((prepared / "parts3" / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["seed"] == movielens.seed == 42
    assert manifest["split"] == {"kind": "ratio", "ratios": [0.8, 0.1, 0.1], "min_rating": None}
    assert (manifest["num_users"], manifest["num_items"], manifest["num_interactions"]) == (943, 1682, 100_000)
    assert "batch_size" not in json.dumps(manifest)
    assert [part["train"] for part in manifest["parts"]] and sum(part["train"] for part in manifest["parts"]) == 80_000


def test_reference_names_the_folder_and_its_manifest(prepared):
    folder = PreparedFolder.open(prepared / "parts3")
    digest = hashlib.sha256((prepared / "parts3" / "manifest.json").read_bytes()).hexdigest()
    assert folder.reference() == {"path": str((prepared / "parts3").resolve()), "manifest_sha256": digest}


def test_text_ids_stay_verbatim_and_explicit_negatives_are_kept(tmp_path):
    users, items = ["007", "7", "u3", "u4"], ["007", *(f"i{k:02d}" for k in range(12))]
    # user k rates every item but item k + 1, which it marks as a negative (target 0)
    rows = [(user, item, 1 if item != items[k + 1] else 0) for k, user in enumerate(users) for item in items]
    text = "".join(f"{user},{item},{target},{time}\n" for time, (user, item, target) in enumerate(rows))
    (tmp_path / "t.csv").write_text("userId,itemId,target,timestamp\n" + text)
    datamodule = CsvDataModule(path=str(tmp_path / "t.csv"), seed=1)
    datamodule.setup("fit")
    write_prepared(datamodule, tmp_path / "out", 2)
    folder = PreparedFolder.open(tmp_path / "out")
    assert folder.item_ids.tolist() == sorted(items) and folder.item_ids[0] == "007"
    share = folder.read_share(0, 1)
    assert share.user_ids.tolist() == ["007", "7", "u3", "u4"]
    negative = share.parts == NEGATIVE
    named = {(share.user_ids[user], folder.item_ids[item]) for user, item in zip(share.users[negative], share.items[negative])}
    assert named == {("007", "i00"), ("7", "i01"), ("u3", "i02"), ("u4", "i03")}
    # negatives follow the positives in single-process order: explicit_negatives' own order
    negatives = torch.from_numpy(np.stack([share.users[negative], share.items[negative]], 1))
    assert torch.equal(negatives, datamodule.training_data.explicit_negatives) and negative[-4:].all()
    assert share.ratings[negative].tolist() == [0.0] * 4
    assert np.sort(read_rows(tmp_path / "out")).tolist() == list(range(len(datamodule.interactions) + 4))


def read_rows(folder: Path) -> np.ndarray:
    return np.concatenate([pq.read_table(path).column("row").to_numpy() for path in sorted(folder.glob("part-*.parquet"))])


# Bad input: one line naming the file, nothing read past it.


def edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def refused(error_type, call, *named: str) -> str:
    with pytest.raises(error_type) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for text in named:
        assert text in message, message
    return message


def test_an_edited_count_is_refused_naming_the_manifest(three_parts):
    edit_manifest(three_parts, lambda manifest: manifest.update(num_users=944))
    refused(DataError, lambda: PreparedFolder.open(three_parts), "manifest.json", "944")


def test_a_part_count_that_its_file_does_not_hold_is_refused(three_parts):
    def change(manifest):
        manifest["parts"][1]["train"] -= 1
        manifest["parts"][1]["valid"] += 1

    edit_manifest(three_parts, change)
    folder = PreparedFolder.open(three_parts)  # the manifest alone is consistent
    refused(DataError, lambda: folder.read_share(1, 3), "part-00001.parquet", "train/valid/test/negative rows")


def test_an_edited_sha256_is_refused_before_the_part_is_parsed(three_parts, monkeypatch):
    edit_manifest(three_parts, lambda manifest: manifest["parts"][2]["files"]["rows"].update(sha256="0" * 64))
    folder = PreparedFolder.open(three_parts)
    monkeypatch.setattr("pyarrow.parquet.ParquetFile", lambda *args: pytest.fail("parsed before its sha256 was checked"))
    refused(DataError, lambda: folder.read_share(2, 3), "part-00002.parquet", "sha256")


def test_a_truncated_part_is_refused(three_parts):
    path = three_parts / "part-00001.parquet"
    path.write_bytes(path.read_bytes()[:1000])
    refused(DataError, lambda: PreparedFolder.open(three_parts), "part-00001.parquet", "truncated or replaced")


def test_a_part_of_another_prepare_is_refused(prepared, three_parts):
    """The 1-part prepare's part in place of this one's part 0, even with the manifest's size made to match it."""
    shutil.copy(prepared / "parts1" / "part-00000.parquet", three_parts / "part-00000.parquet")
    refused(DataError, lambda: PreparedFolder.open(three_parts), "part-00000.parquet", "truncated or replaced")
    size = (three_parts / "part-00000.parquet").stat().st_size
    edit_manifest(three_parts, lambda manifest: manifest["parts"][0]["files"]["rows"].update(bytes=size))
    refused(DataError, lambda: PreparedFolder.open(three_parts).read_share(0, 3), "part-00000.parquet", "another prepare")


def rewrite_part(folder: Path, k: int, change) -> None:
    """Part k's rows changed by `change(columns)` and the manifest's sha256 and size made to match: a crafted folder."""
    path = folder / f"part-{k:05d}.parquet"
    table = pq.read_table(path)
    columns = {name: table.column(name).to_numpy().copy() for name in table.column_names}
    change(columns)
    pq.write_table(pa.table(columns, schema=table.schema), path)
    record = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}
    edit_manifest(folder, lambda manifest: manifest["parts"][k]["files"]["rows"].update(record))


@pytest.mark.parametrize(
    "column, value, message",
    [("item", 1682, "item indices outside 0 .. 1681"), ("user", 942, "user indices outside its block 0 .. "), ("part", 7, "part codes")],
)
def test_a_crafted_part_with_indices_out_of_range_is_refused(three_parts, column, value, message):
    rewrite_part(three_parts, 0, lambda columns: columns[column].__setitem__(5, value))
    refused(DataError, lambda: PreparedFolder.open(three_parts).read_share(0, 3), "part-00000.parquet", message)


def test_a_row_position_in_two_parts_is_refused(three_parts):
    second = pq.read_table(three_parts / "part-00001.parquet").column("row")[0].as_py()
    rewrite_part(three_parts, 0, lambda columns: columns["row"].__setitem__(0, second))
    refused(DataError, lambda: PreparedFolder.open(three_parts).read_share(0, 1), f"row position {second} twice")


def test_a_missing_part_is_refused(three_parts):
    (three_parts / "users-00002.parquet").unlink()
    refused(DataError, lambda: PreparedFolder.open(three_parts), "users-00002.parquet", "missing")


def test_an_extra_part_is_refused(three_parts):
    shutil.copy(three_parts / "part-00000.parquet", three_parts / "part-00003.parquet")
    refused(DataError, lambda: PreparedFolder.open(three_parts), "part-00003.parquet", "not in")


def test_a_newer_schema_is_refused(three_parts):
    edit_manifest(three_parts, lambda manifest: manifest.update(schema_version=2))
    refused(DataError, lambda: PreparedFolder.open(three_parts), "manifest.json", "schema version 2 is newer")


def test_more_processes_than_parts_is_refused(prepared):
    folder = PreparedFolder.open(prepared / "parts3")
    refused(ConfigError, lambda: folder.read_share(0, 4), "prepared in 3 parts", "parts >= 4")
    refused(ConfigError, lambda: folder.train_rows_per_rank(4), "prepared in 3 parts")


def test_a_manifest_naming_a_file_outside_the_folder_is_refused(three_parts):
    (three_parts.parent / "x.parquet").write_bytes((three_parts / "part-00000.parquet").read_bytes())
    edit_manifest(three_parts, lambda manifest: manifest["parts"][0]["files"]["rows"].update(name="../x.parquet"))
    refused(DataError, lambda: PreparedFolder.open(three_parts), "manifest.json", "'../x.parquet'", "not part-00000.parquet")


def test_a_huge_num_items_allocates_nothing(three_parts):
    edit_manifest(three_parts, lambda manifest: manifest.update(num_items=10**15))
    tracemalloc.start()
    try:
        refused(
            DataError, lambda: PreparedFolder.open(three_parts), "items.parquet", "1000000000000000 rows", "more than prepare ever packs"
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20


def test_an_items_count_its_file_does_not_hold_is_refused(three_parts):
    edit_manifest(three_parts, lambda manifest: manifest.update(num_items=1683))
    refused(DataError, lambda: PreparedFolder.open(three_parts), "items.parquet", "1682 rows, not the 1683")


def test_a_part_replaced_by_a_link_is_refused(three_parts, tmp_path):
    (three_parts / "users-00001.parquet").rename(tmp_path / "elsewhere.parquet")
    (three_parts / "users-00001.parquet").symlink_to(tmp_path / "elsewhere.parquet")
    refused(DataError, lambda: PreparedFolder.open(three_parts), "users-00001.parquet", "symbolic link")


def test_an_existing_output_is_refused_and_untouched(movielens, tmp_path):
    (tmp_path / "out").mkdir()
    refused(ConfigError, lambda: write_prepared(movielens, tmp_path / "out", 2), "output=", "already exists")
    assert list(tmp_path.iterdir()) == [tmp_path / "out"] and not list((tmp_path / "out").iterdir())


def test_a_failed_write_leaves_no_folder(movielens, tmp_path, monkeypatch):
    def full_disk(folder, name):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(write, "_file_record", full_disk)
    refused(WriteFailed, lambda: write_prepared(movielens, tmp_path / "out", 2), "output=", "disk is full")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_as_the_hidden_folder_is_made_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(write.os, "mkdir", made_then_interrupted(write.os.mkdir))
    with pytest.raises(KeyboardInterrupt):
        write.build_folder(tmp_path / "out", lambda folder: {})
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_hidden_folder_name_someone_else_holds_is_refused_and_left_alone(tmp_path, monkeypatch):
    taken = tmp_path / ".out.0000000000000000.tmp"
    taken.mkdir()
    (taken / "theirs").write_text("theirs")
    monkeypatch.setattr("recsys_lightning.runs.atomic.secrets.token_hex", lambda size: "0" * 2 * size)
    refused(WriteFailed, lambda: write.build_folder(tmp_path / "out", lambda folder: {}), "output=", "File exists")
    assert [path.name for path in tmp_path.iterdir()] == [taken.name] and (taken / "theirs").read_text() == "theirs"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ([], "output is not set"),
        (["output=x", "parts=0"], "parts=0: must be an integer >= 1"),
        (["output=x", "+data.batch_sizee=3"], "did you mean data.batch_size?"),
        (["output=x", "data.item_features=[genre]"], "prepare does not write side features yet"),
        (
            ["output=x", "data.split=cold_items", "data.eval_candidates=cold"],
            "data.eval_candidates=cold: prepare ranks nothing, and a prepared folder is ranked whole (data=prepared has no "
            "cold_items split to rank new items of); drop it",
        ),
    ],
)
def test_prepare_arguments_are_checked_before_any_data_is_read(overrides, message, monkeypatch):
    monkeypatch.setattr("recsys_lightning.prepare.build_datamodule", lambda *args: pytest.fail("data read before the checks"))
    refused(ConfigError, lambda: prepare(compose_config("prepare", *overrides)), message)


# A checkpoint of a run trained on several ranks names its prepared folder instead of holding the catalogue.


def test_a_checkpoint_naming_a_prepared_folder_gets_its_catalogue(movielens, prepared):
    state = {"version": 1, "prepared": PreparedFolder.open(prepared / "parts3").reference()}
    catalogue = catalogue_from_checkpoint(state, "run.ckpt")
    assert torch.equal(catalogue.seen.indices, movielens.training_data.catalogue.seen.indices)


def test_a_checkpoint_whose_prepared_folder_is_gone_or_changed_is_refused(three_parts):
    reference = PreparedFolder.open(three_parts).reference()
    changed = {**reference, "manifest_sha256": "1" * 64}
    refused(ConfigError, lambda: catalogue_from_checkpoint({"version": 1, "prepared": changed}, "run.ckpt"), "run.ckpt", "changed since")
    shutil.rmtree(three_parts)
    refused(ConfigError, lambda: catalogue_from_checkpoint({"version": 1, "prepared": reference}, "run.ckpt"), str(three_parts), "restore")


@pytest.mark.slow
def test_prepare_entry_point_writes_a_folder_and_refuses_an_existing_one(tmp_path, movielens_run):
    done = run_module("recsys_lightning.prepare", "data=movielens", f"output={tmp_path / 'ml'}", "parts=2")
    assert done.returncode == 0, done.stderr
    assert len(PreparedFolder.open(tmp_path / "ml").parts) == 2
    # One process on the prepared folder trains exactly the run data=movielens trains (movielens_run's overrides).
    run_dir = tmp_path / "run"
    overrides = ["trainer.max_epochs=3", "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={run_dir}"]
    trained = run_module("recsys_lightning.train", "data=prepared", f"data.path={tmp_path / 'ml'}", *overrides)
    assert trained.returncode == 0, trained.stderr[-3000:]
    direct, prepared = (json.loads((folder / "metrics.json").read_text()) for folder in (movielens_run, run_dir))
    assert {k: v for k, v in prepared.items() if k.startswith("test/")} == {k: v for k, v in direct.items() if k.startswith("test/")}
    again = run_module("recsys_lightning.prepare", f"output={tmp_path / 'ml'}")
    assert again.returncode == 1 and again.stderr.strip().splitlines()[-1].startswith("error: output=")
    features = run_module("recsys_lightning.prepare", f"output={tmp_path / 'f'}", "data.item_features=[genre]")
    assert features.returncode == 1 and "does not write side features" in features.stderr and not (tmp_path / "f").exists()


def test_a_source_without_ratings_stays_without_ratings_when_prepared(movielens, prepared, tmp_path):
    """A rating loss on prepared synthetic data was trained on ratings all 1 instead of refused as on the source."""
    synthetic = instantiate(
        compose_config(
            "prepare", "output=unused", "data=synthetic", "data.num_users=40", "data.num_items=30", "data.num_interactions=500"
        ).data
    )
    synthetic.setup("fit")
    write_prepared(synthetic, tmp_path / "synthetic", 2)
    assert PreparedFolder.open(tmp_path / "synthetic").ratings_missing == synthetic.training_data.ratings_missing
    assert "synthetic data has no ratings" in synthetic.training_data.ratings_missing
    datamodule = PreparedDataModule(path=str(tmp_path / "synthetic"))
    datamodule.read_share(1, 2)
    assert datamodule.training_data.ratings_missing == synthetic.training_data.ratings_missing  # what MSE refuses on
    assert PreparedFolder.open(prepared / "parts3").ratings_missing is None == movielens.training_data.ratings_missing


def test_a_manifest_whose_ratings_missing_is_not_text_is_refused(three_parts):
    edit_manifest(three_parts, lambda manifest: manifest.update(ratings_missing=3))
    refused(DataError, lambda: PreparedFolder.open(three_parts), "manifest.json", "ratings_missing")


def test_the_documented_output_folder_is_ignored_by_git():
    """README and conf/prepare.yaml write to prepared/<name> inside the checkout: its Parquet parts (gigabytes,
    and data under the source's licence) must not be one `git add -A` away from a commit."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert subprocess.run(["git", "check-ignore", "-q", "prepared/ml100k/part-00000.parquet"], cwd=ROOT).returncode == 0


def test_a_data_option_refusing_its_settings_is_one_line_not_hydras_wrapper(tmp_path):
    """`prepare data=csv` without a path ended in Hydra's InstantiationException over several lines."""
    cfg = compose_config("prepare", "data=csv", f"output={tmp_path / 'out'}")
    refused(DataError, lambda: prepare(cfg), "set either data.path")
    assert not (tmp_path / "out").exists()


def test_preparing_a_prepared_folder_again_is_refused_before_reading(prepared, tmp_path, monkeypatch):
    """`prepare data=prepared` (to cut a folder into other parts) ended in an AttributeError traceback."""
    monkeypatch.setattr("recsys_lightning.prepare.build_datamodule", lambda *args: pytest.fail("data read before the checks"))
    cfg = compose_config("prepare", "data=prepared", f"data.path={prepared / 'parts3'}", f"output={tmp_path / 'out'}", "parts=2")
    refused(ConfigError, lambda: prepare(cfg), "data=prepared", "prepare the source again")


def test_a_file_given_as_the_prepared_folder_is_named_as_a_file(tmp_path):
    """data.path=<the source CSV> was answered 'no such folder' although the path exists."""
    (tmp_path / "ratings.csv").write_text("userId,itemId\n1,2\n")
    refused(ConfigError, lambda: PreparedFolder.open(tmp_path / "ratings.csv"), "ratings.csv: a file, not a folder", "prepare")
