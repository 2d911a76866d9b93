"""CSV input that is not what it claims: leakage between pre-split files, non-finite numbers, a repeated
header, dates out of range, archives and encodings that cannot be read. Each is one line naming the
file, the line or the key, and what to do."""

import bz2
import gzip
import logging
import lzma
import os
import re
import sys
from pathlib import Path

import pytest

from recsys_lightning.data.csv import CsvDataModule
from recsys_lightning.errors import ConfigError, DataError
from recsys_lightning.runs.safe_config import checked_component
from recsys_lightning.validation import check_training_config

from helpers import training_config

HEADER = "userId,itemId,rating,timestamp\n"
GOOD_ROWS = "".join(f"u{u},i{(u * 7 + k) % 30},{1 + (u + k) % 5},{1000 + k}\n" for u in range(20) for k in range(12))


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def error_of(tmp_path: Path, text: str | bytes, name: str = "x.csv", **options) -> str:
    """The one-line message a file gives."""
    path = write(tmp_path / name, text)
    with pytest.raises(DataError) as raised:
        CsvDataModule(path=str(path), **options).setup()
    message = str(raised.value)
    assert "\n" not in message and len(message) < 500, message
    return message


def pairs(rows) -> str:
    return "userId,itemId\n" + "".join(f"{user},{item}\n" for user, item in rows)


TRAIN = [(f"u{u}", f"i{i}") for u in range(6) for i in range(u, u + 6)]


@pytest.fixture
def train_file(tmp_path) -> Path:
    return write(tmp_path / "train.csv", pairs(TRAIN))


def test_test_file_that_is_the_train_file_under_any_name_is_a_config_error(tmp_path, train_file, monkeypatch):
    valid = write(tmp_path / "valid.csv", pairs([("u0", "i9")]))
    os.symlink(train_file, tmp_path / "link.csv")
    monkeypatch.chdir(tmp_path)
    for test_path in (str(train_file), "train.csv", "./sub/../train.csv", "link.csv"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(ConfigError, match=r"data.test_path and data.train_path are the same file .*train.csv"):
            CsvDataModule(train_path=str(train_file), valid_path=str(valid), test_path=test_path).setup()
    with pytest.raises(ConfigError, match="data.test_path and data.valid_path are the same file"):
        CsvDataModule(train_path=str(train_file), valid_path=str(valid), test_path="valid.csv").setup()
    with pytest.raises(ConfigError, match="data.valid_path and data.train_path are the same file"):
        CsvDataModule(train_path=str(train_file), valid_path="link.csv").setup()


def overlapping_files(tmp_path: Path) -> dict[str, str]:
    # valid: 2 new pairs, 2 pairs already in train, 1 unseen user; test: 1 new, 1 in train, 1 also in valid.
    valid = write(tmp_path / "valid.csv", pairs([("u0", "i7"), ("u1", "i0"), ("u0", "i0"), ("u1", "i1"), ("ghost", "i1")]))
    test = write(tmp_path / "test.csv", pairs([("u2", "i0"), ("u2", "i2"), ("u0", "i7")]))
    return {"train_path": str(tmp_path / "train.csv"), "valid_path": str(valid), "test_path": str(test)}


def test_held_out_pairs_seen_before_are_dropped_counted_and_reported_once(tmp_path, train_file, caplog):
    datamodule = CsvDataModule(**overlapping_files(tmp_path))
    with caplog.at_level(logging.INFO):
        datamodule.setup()
    held_out = {
        part: sorted(
            zip(
                datamodule.interactions.user_ids[datamodule.interactions.users[rows]],
                datamodule.interactions.item_ids[datamodule.interactions.items[rows]],
            )
        )
        for part, rows in (("valid", datamodule.split.valid), ("test", datamodule.split.test))
    }
    assert held_out == {"valid": [("u0", "i7"), ("u1", "i0")], "test": [("u2", "i0")]}
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING and "also in" in record.getMessage()]
    assert warnings == [
        "valid 2 and test 1 (user, item) pairs also in train, test 1 also in valid: they are left out of evaluation "
        "(a seen item is never ranked, so they would count as misses); data.on_overlap=error makes this an error"
    ]
    summary = [record.getMessage() for record in caplog.records if "pre-split files give" in record.getMessage()]
    assert len(summary) == 1 and "ratio split" not in summary[0]
    assert summary[0].endswith(
        "7 users, 11 items; pre-split files give train 36 / valid 5 / test 3 interactions; left out of valid: "
        "1 with a user or item absent from train, 2 already in train; left out of test: 1 already in train, "
        "1 already in valid -> train 36 / valid 2 / test 1"
    ), summary[0]
    assert any(message.startswith(f"read 5 rows from {tmp_path / 'valid.csv'}") for message in caplog.messages)


def test_overlap_is_an_error_with_on_overlap_error(tmp_path, train_file):
    with pytest.raises(DataError) as raised:
        CsvDataModule(on_overlap="error", **overlapping_files(tmp_path)).setup()
    message = str(raised.value)
    assert message.startswith("csv:train=") and "\n" not in message
    assert "valid 2 and test 1 (user, item) pairs also in train, test 1 also in valid (e.g. user 'u0', item 'i0')" in message
    assert "set data.on_overlap=drop" in message
    with pytest.raises(ConfigError, match="data.on_overlap='warn': use drop"):
        CsvDataModule(on_overlap="warn", **overlapping_files(tmp_path))


def test_a_held_out_file_without_a_target_column_holds_positives(tmp_path, train_file):
    train = write(tmp_path / "train_t.csv", "userId,itemId,target\n" + "".join(f"{u},{i},1\n" for u, i in TRAIN) + "u0,i9,0\n")
    valid = write(tmp_path / "valid.csv", pairs([("u0", "i7"), ("u1", "i0")]))
    datamodule = CsvDataModule(train_path=str(train), valid_path=str(valid))
    datamodule.setup()
    assert len(datamodule.split.valid) == 2
    ((user, item),) = datamodule.training_data.explicit_negatives.tolist()
    assert (datamodule.interactions.user_ids[user], datamodule.interactions.item_ids[item]) == ("u0", "i9")


def test_validation_emptied_by_overlap_says_so(tmp_path, train_file):
    valid = write(tmp_path / "valid.csv", pairs(TRAIN[:3]))
    with pytest.raises(DataError, match="no validation interaction is left; left out of valid: 3 already in train"):
        CsvDataModule(train_path=str(train_file), valid_path=str(valid)).setup()


def test_a_test_file_with_nothing_left_to_test_is_an_error_saying_why(tmp_path, train_file):
    """A test file that lies in train under another name (a gzip copy escapes the same-file check) would
    otherwise end in "test 0" and a run without test metrics."""
    valid = write(tmp_path / "valid.csv", pairs([("u0", "i7"), ("u1", "i0")]))
    copy = write(tmp_path / "test.csv.gz", gzip.compress(train_file.read_bytes()))
    mixed = write(tmp_path / "mixed.csv", pairs([TRAIN[0], TRAIN[0], TRAIN[5], ("ghost", "i1"), ("u0", "i7")]))
    expected = {
        copy: "all 36 test pairs also occur in train",
        mixed: "of 5 test rows, 1 dropped before splitting (target 0, below data.min_rating, or repeated), "
        "1 have a user or item absent from train, 2 also occur in train, 1 also occur in valid",
    }
    for test, why in expected.items():
        with pytest.raises(DataError) as raised:
            CsvDataModule(train_path=str(train_file), valid_path=str(valid), test_path=str(test)).setup()
        assert str(raised.value) == (
            f"csv:train={train_file}, valid={valid}, test={test}: no test interaction is left: {why}; "
            "test needs new (user, item) pairs of users and items seen in train: fix the test file or leave it out"
        )
    without_test = CsvDataModule(train_path=str(train_file), valid_path=str(valid))
    without_test.setup()
    assert not without_test.has_test and len(without_test.split.valid) == 2


@pytest.mark.parametrize(
    "value, problem",
    [
        ("inf", "is inf, not a finite number"),
        ("-inf", "is -inf, not a finite number"),
        ("1e400", "is inf, not a finite number"),
        ("nan", "is 'nan', not a number"),
        ("NaN", "is 'NaN', not a number"),
        ("", "is '', not a number"),
        ("1e39", "is 1e+39, beyond the range of float32 (about ±3.4e+38)"),
    ],
)
def test_non_finite_ratings_are_errors_naming_the_line(tmp_path, value, problem):
    message = error_of(tmp_path, HEADER + GOOD_ROWS + f"u1,i2,{value},5\n")
    assert f"x.csv: line 242: 'rating' {problem}; fix or remove that row" in message


@pytest.mark.parametrize("value", ["inf", "-inf", "1e400", "nan"])
def test_non_finite_numeric_timestamps_are_errors_naming_the_line(tmp_path, value):
    message = error_of(tmp_path, HEADER + GOOD_ROWS + f"u1,i2,3,{value}\n")
    assert "x.csv: line 242: 'timestamp' is " in message and "not a" in message


def test_repeated_header_is_an_error_naming_its_line(tmp_path):
    message = error_of(tmp_path, HEADER + GOOD_ROWS + HEADER + GOOD_ROWS)
    assert message.endswith("x.csv: line 242 repeats the header; remove it (were two files joined?)")


def date_rows(last: str) -> str:
    return "userId,itemId,timestamp\n" + "".join(f"u{u},i{k},2024-01-{k + 1:02d}\n" for u in range(5) for k in range(8)) + f"u1,i9,{last}\n"


@pytest.mark.parametrize("value", ["99999-01-01", "1e30", "2024-13-01", "nan"])
def test_dates_out_of_range_are_errors_naming_the_line(tmp_path, value):
    message = error_of(tmp_path, date_rows(value))
    assert f"x.csv: line 42: 'timestamp' is '{value}', not a date (years 1-9999" in message


def test_far_dates_within_range_order_the_rows(tmp_path):
    path = write(tmp_path / "far.csv", date_rows("9999-12-31") + "u1,i10,0001-01-01\n")
    datamodule = CsvDataModule(path=str(path), split="temporal")
    datamodule.setup()
    timestamps = dict(zip(datamodule.interactions.item_ids[datamodule.interactions.items], datamodule.interactions.timestamps))
    assert timestamps["i9"] == pytest.approx(253402214400.0) and timestamps["i10"] == pytest.approx(-62135596800.0)


CORRUPT = {
    "x.csv.xz": lzma.compress(HEADER.encode() * 50)[:40],
    "x.csv.bz2": b"BZh9" + b"\x00" * 40,
    "x.csv.gz": gzip.compress(HEADER.encode() * 50)[:30],
    "x.csv.zip": b"PK\x03\x04not really a zip",
    "y.csv.bz2": bz2.compress(HEADER.encode() * 50)[:-8],
}


@pytest.mark.parametrize("name", CORRUPT)
def test_corrupt_archives_are_one_line(tmp_path, name):
    message = error_of(tmp_path, CORRUPT[name], name=name)
    assert f"{name}: cannot be decompressed or read (" in message and "the archive may be corrupt or truncated" in message


def test_zst_without_zstandard_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)  # as if not installed
    message = error_of(tmp_path, b"\x28\xb5\x2f\xfd" + b"\x00" * 20, name="x.csv.zst")
    assert message.endswith(
        "x.csv.zst: reading .zst files needs the zstandard package: pip install zstandard (or decompress the file first)"
    )


@pytest.mark.parametrize("encoding", ["utf-9", "base64", ""])
def test_unknown_encoding_is_a_config_error_listing_real_ones(encoding):
    """Refused before any file is opened: up front for a composed config, and for a run's recorded one."""
    accepted = "must be a text encoding Python knows (utf-8, latin-1, cp1252, utf-16, ...)"
    with pytest.raises(ConfigError, match=re.escape(f"data.encoding={encoding}: {accepted}")):
        check_training_config(training_config("data=csv", f"data.encoding='{encoding}'"))
    recorded = {"_target_": "recsys_lightning.data.csv.CsvDataModule", "path": "x.csv", "encoding": encoding}
    with pytest.raises(ConfigError, match=re.escape(f"config.yaml: data.encoding='{encoding}': {accepted}; refusing to build it")):
        checked_component("data", recorded, "config.yaml")


def test_quoted_raw_values_are_cut_short(tmp_path):
    huge = "x" * 5000
    message = error_of(tmp_path, HEADER + GOOD_ROWS + f"u1,i2,{huge},5\n")
    assert "line 242: 'rating' is 'xxx" in message and "..." in message and len(message) < 250
    message = error_of(tmp_path, "userId;" + ";".join(f"c{k}" * 100 for k in range(50)) + "\n1\n")
    assert "only one column found ('userId;c0c0" in message and len(message) < 300
    message = error_of(tmp_path, ",".join(f"column{k}" * 20 for k in range(500)) + "\n" + ",".join("1" * 500) + "\n")
    assert "no column 'userId'; columns found: 'column0" in message


def test_na_and_null_are_ids_but_an_empty_cell_is_not(tmp_path):
    datamodule = CsvDataModule(
        path=str(write(tmp_path / "na.csv", pairs([(user, f"i{i}") for user in ("NA", "null", "nan", "None") for i in range(5)]))),
        split="leave_one_out",
    )
    datamodule.setup()
    assert sorted(datamodule.interactions.user_ids) == ["NA", "None", "nan", "null"]
    assert "line 3: empty 'itemId'" in error_of(tmp_path, "userId,itemId\nNA,i1\nnull,\n")
