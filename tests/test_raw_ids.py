"""Raw ids are kept verbatim from the file to the checkpoint to recs.csv: ids that read alike stay apart,
integer storage only when exact, and serving lookups that never coerce."""

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_lightning.data import csv as csv_module
from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.data.csv import CsvDataModule, integer_ids_if_exact
from recsys_lightning.errors import DataError

from helpers import FrameDataModule, run_module

LOOKALIKE_USERS = ["007", "7", "+7", " 7", "NA", "null"]


def write(path: Path, rows: list[tuple[str, str]], header: str = "userId,itemId") -> Path:
    path.write_text(header + "\n" + "".join(",".join(row) + "\n" for row in rows))
    return path


def grid(users, items) -> list[tuple[str, str]]:
    return [(str(user), str(item)) for user in users for item in items]


def set_up(path: Path, **options) -> CsvDataModule:
    datamodule = CsvDataModule(path=str(path), split="leave_one_out", **options)
    datamodule.setup()
    return datamodule


def round_trip(datamodule: CsvDataModule) -> Catalogue:
    """What serving sees: the catalogue as it comes back out of a checkpoint."""
    buffer = io.BytesIO()
    torch.save(datamodule.training_data.catalogue.to_state(), buffer)
    buffer.seek(0)
    return Catalogue.from_state(torch.load(buffer, weights_only=True))


def test_ids_that_read_alike_are_distinct_users_through_the_checkpoint(tmp_path):
    datamodule = set_up(write(tmp_path / "u.csv", grid(LOOKALIKE_USERS, range(6))))
    assert datamodule.num_users == 6
    assert sorted(datamodule.interactions.user_ids) == sorted(LOOKALIKE_USERS)
    catalogue = round_trip(datamodule)
    positions = [catalogue.user_index(user) for user in LOOKALIKE_USERS]
    assert None not in positions and len(set(positions)) == 6
    assert [catalogue.user_ids[p] for p in positions] == LOOKALIKE_USERS
    assert catalogue.user_index(7) == catalogue.user_index("7")  # Hydra turns user_id=7 into int 7
    assert catalogue.user_index("07") is None and catalogue.user_index(7.0) is None


def test_one_decimal_item_id_leaves_the_other_ids_as_written(tmp_path):
    datamodule = set_up(write(tmp_path / "i.csv", grid(range(5), ["7", "1.5", "38", "4", "5"])))
    assert sorted(datamodule.interactions.item_ids) == ["1.5", "38", "4", "5", "7"]
    catalogue = round_trip(datamodule)
    assert catalogue.item_index(7) == catalogue.item_index("7") is not None
    assert catalogue.item_ids[catalogue.item_index(38)] == "38"  # not 38.0
    for unknown in ("7.0", 7.0, 1.5, True, " 7"):
        assert catalogue.item_index(unknown) is None, unknown
    assert catalogue.item_index("1.5") is not None


def test_integer_ids_are_stored_as_int64_only_when_every_id_is_exact(tmp_path):
    datamodule = set_up(write(tmp_path / "n.csv", grid([1, 2, 10, 9, -3], range(5))))
    assert datamodule.interactions.user_ids.dtype == np.int64
    assert datamodule.interactions.user_ids.tolist() == [-3, 1, 2, 9, 10]  # numeric order, not text order
    state = datamodule.training_data.catalogue.to_state()
    assert isinstance(state["user_ids"], torch.Tensor) and state["user_ids"].dtype == torch.int64
    catalogue = round_trip(datamodule)
    assert catalogue.user_index(1) == catalogue.user_index("1") == 1
    assert catalogue.user_index(-3) == catalogue.user_index("-3") == 0
    for unknown in (1.9, True, False, 1.0, "1.0", " 1", "+1", "01", "1 ", "", None, [1], "٩", 2**70):
        assert catalogue.user_index(unknown) is None, unknown


def test_integer_ids_if_exact_keeps_text_unless_every_id_round_trips():
    def converted(ids):
        result = integer_ids_if_exact(pd.Series(ids, dtype=str).astype("category"))
        return result.cat.categories.tolist()

    assert converted(["7", "-3", "0"]) == [-3, 0, 7]
    assert converted(["9223372036854775807", "1"]) == [1, 9223372036854775807]
    for spoiler in ("07", "+7", " 7", "7.0", "-0", "9223372036854775808", "-9223372036854775809", "1e3", "٧"):
        assert converted(["7", spoiler]) == sorted(["7", spoiler]), spoiler


def test_thirty_digit_ids_survive_the_checkpoint(tmp_path):
    users = [10**29 + k for k in range(5)]
    datamodule = set_up(write(tmp_path / "big.csv", grid(users, range(5))))
    catalogue = round_trip(datamodule)
    assert catalogue.user_ids.tolist() == [str(user) for user in users]
    assert catalogue.user_index(users[3]) == catalogue.user_index(str(users[3])) == 3
    # Python ints beyond int64 from another source: strings in the state, not an OverflowError.
    frame = pd.DataFrame(
        {
            "user_id": pd.Series([2**64 + k for k in range(4)] * 5, dtype=object),
            "item_id": np.repeat(np.arange(5), 4),
            "rating": 1.0,
            "timestamp": np.arange(20.0),
        }
    )
    source = FrameDataModule(frame, split="leave_one_out")
    source.setup()
    state = source.training_data.catalogue.to_state()
    assert state["user_ids"] == [str(2**64 + k) for k in range(4)]


def test_pre_split_files_and_explicit_negatives_match_on_the_raw_text(tmp_path):
    header = "userId,itemId,target"
    train = [(user, f"i{item}", "1") for user, first in (("7", 0), ("007", 2)) for item in range(first, first + 6)]
    train += [("007", "i1", "0"), ("7", "i6", "0")]  # explicit negatives of two different users
    valid = [("7", "i7", "1"), ("007", "i0", "1"), ("07", "i1", "1")]  # 07 never trained: left out
    datamodule = CsvDataModule(
        train_path=str(write(tmp_path / "train.csv", train, header)), valid_path=str(write(tmp_path / "valid.csv", valid, header))
    )
    datamodule.setup()
    interactions = datamodule.interactions
    assert sorted(interactions.user_ids) == ["007", "07", "7"]
    valid_users = interactions.user_ids[interactions.users[datamodule.split.valid]]
    assert sorted(valid_users) == ["007", "7"]
    negatives = {(interactions.user_ids[u], interactions.item_ids[i]) for u, i in datamodule.training_data.explicit_negatives.tolist()}
    assert negatives == {("007", "i1"), ("7", "i6")}


def test_items_file_titles_match_only_the_same_raw_id(tmp_path):
    rows = grid(range(5), [7, 8, 9, 10])
    items = tmp_path / "items.csv"
    items.write_text("itemId,title\n007,Bond\n7,Seven\n8.0,Eight as float\n10,Ten\n")
    datamodule = set_up(write(tmp_path / "n.csv", rows), items_path=str(items))
    assert datamodule.interactions.item_ids.dtype == np.int64
    catalogue = datamodule.training_data.catalogue
    assert catalogue.title_of([catalogue.item_index(i) for i in (7, 8, 10)]) == ["Seven", "", "Ten"]
    datamodule = set_up(write(tmp_path / "s.csv", grid(range(5), ["007", "7", "8"])), items_path=str(items))
    catalogue = datamodule.training_data.catalogue
    assert catalogue.title_of([catalogue.item_index(i) for i in ("007", "7", "8")]) == ["Bond", "Seven", ""]


def test_ids_and_line_numbers_hold_across_read_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_module, "CHUNK_ROWS", 4)  # 30 rows in 8 chunks
    rows = grid(["7", "07", "x"], range(10))
    datamodule = set_up(write(tmp_path / "c.csv", rows))
    assert sorted(datamodule.interactions.user_ids) == ["07", "7", "x"] and len(datamodule.interactions) == 30
    rows[21] = ("u", "")  # line 23, in the sixth chunk
    with pytest.raises(DataError, match=r"c2.csv: line 23: empty 'itemId'"):
        set_up(write(tmp_path / "c2.csv", rows))


@pytest.mark.slow
def test_train_then_recommend_write_lookalike_ids_verbatim(tmp_path):
    """Through the real entry points: 007 and 7 train as two users and come out of recs.csv as written."""
    users = ["007", "7", "+7", "NA"] + [f"u{u}" for u in range(26)]
    rng = np.random.default_rng(0)
    rows = [(user, item) for user in users for item in rng.choice([f"{i:03d}" if i % 2 else str(i) for i in range(40)], 8, replace=False)]
    data = write(tmp_path / "lookalike.csv", rows)
    result = run_module(
        "recsys_lightning.train",
        "data=csv",
        f"data.path={data}",
        "data.split=leave_one_out",
        "debug=quick",
        f"paths.output_dir={tmp_path / 'out'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [path.parent for path in (tmp_path / "out").glob("runs/*/*/.hydra")]
    recs = tmp_path / "recs.csv"
    result = run_module("recsys_lightning.recommend", f"run_dir={run_dir}", "users=all", "k=5", f"output={recs}")
    assert result.returncode == 0, result.stderr[-3000:]
    written = pd.read_csv(recs, dtype=str, keep_default_na=False)
    assert set(written.user_id) == set(users)
    assert {"007", "7", "+7", "NA"} <= set(written.user_id)
    assert set(written.item_id) <= {item for _, item in rows} and any(item.startswith("0") for item in written.item_id)
