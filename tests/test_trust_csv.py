"""CSV rows that would shift or be misread (issue 21): a row with more or fewer fields than the header,
a file compressed twice, an explicit negative after a positive of the same pair, item and user columns
that are one column, an items file for other data, and an item with two titles."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import logging
from pathlib import Path

import numpy as np
import pytest

from recsys_lightning.data.csv import CsvDataModule, read_feature_columns, read_interactions, read_item_titles
from recsys_lightning.data.csv_fields import FieldCheckedStream
from recsys_lightning.errors import ConfigError, DataError
from tests.helpers import run_module

HEADER = b"userId,itemId,rating,timestamp\n"


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def read(path: Path, **options):
    return read_interactions(path, user_col="userId", item_col="itemId", **options)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            b"1,10,4,100\nSmith, John,24,4,1600089286\n",
            "line 3 has 5 fields, the header has 4; quote each field that contains the separator ','",
        ),
        (b"1,10,4,100\n2,11,5\n", "line 3 has 3 fields, the header has 4; add the missing fields"),
        (b"1,10,4,100\n2\t11\t5\t100\n", "line 3 has 1 field, the header has 4; the separator is ',': set data.sep"),
        (b"1,10,4,100\n2;11;5;100\n", "line 3 has 1 field, the header has 4; the separator is ','"),
        (b'"a\nb",10,4,100\n"x,y",11,5,100\n2,11,5,100,\n', "line 5 has 5 fields"),  # the row count is 4, the line 5
        (b'12" vinyl,10,4,100\n2,11,5,100,7\n', "line 3 has 5 fields"),  # a quote inside a field is a character
        (b"1,10,4,100\r\n2,11,5\r\n", "line 3 has 3 fields"),
        (b"1,10,4,100\n2,11,5", "line 3 has 3 fields"),  # no line break at the end
    ],
    ids=["extra", "missing", "tab_line", "semicolon_line", "after_quoted_line_break", "literal_quote", "windows", "last_line"],
)
def test_a_row_with_more_or_fewer_fields_than_the_header_is_one_error_naming_the_line(tmp_path, rows, message):
    path = write(tmp_path / "events.csv", HEADER + rows)
    with pytest.raises(DataError, match=message) as caught:
        read(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_row_messages_name_the_line_where_the_row_starts_after_quoted_line_breaks(tmp_path, monkeypatch):
    monkeypatch.setattr("recsys_lightning.data.csv.CHUNK_ROWS", 2)
    content = HEADER + b'"a\nb\nc",10,4,100\n2,11,5,101\n"d\ne",12,3,102\n4,13,x,103\n'
    with pytest.raises(DataError, match="line 8: 'rating' is 'x', not a number"):  # the 4th row
        read(write(tmp_path / "events.csv", content))


@pytest.mark.parametrize("suffix", [".gz", ".bz2"])
def test_field_counts_are_checked_in_compressed_files_and_across_chunks(tmp_path, suffix, monkeypatch):
    monkeypatch.setattr("recsys_lightning.data.csv.CHUNK_ROWS", 1000)
    rows = b"".join(b"%d,%d,4,%d\n" % (row % 97, row % 31, row) for row in range(5000))
    content = HEADER + rows + b"7,8,9\n"
    compress = gzip.compress if suffix == ".gz" else bz2.compress
    path = write(tmp_path / f"events.csv{suffix}", compress(content))
    with pytest.raises(DataError, match="line 5002 has 3 fields, the header has 4"):
        read(path)
    assert len(read(write(tmp_path / f"good.csv{suffix}", compress(HEADER + rows)))) == 5000


def test_well_formed_neighbours_read_as_before(tmp_path):
    quoted = HEADER + b'"Smith, John",10,4,100\n"multi\nline",11,5,101\n"say ""hi""",12,3,102\n12" vinyl,13,2,103\n'
    frame = read(write(tmp_path / "quoted.csv", quoted))
    assert sorted(frame.user_id.astype(str)) == ['12" vinyl', "Smith, John", "multi\nline", 'say "hi"']
    trailing = b"userId,itemId,rating,timestamp,\n1,10,4,100,\n2,11,5,101,\n"  # every line, the header too
    assert len(read(write(tmp_path / "trailing.csv", trailing))) == 2
    windows = HEADER.replace(b"\n", b"\r\n") + b"1,10,4,100\r\n2,11,5,101\r\n"
    assert len(read(write(tmp_path / "windows.csv", windows))) == 2
    old_mac = HEADER.replace(b"\n", b"\r") + b"1,10,4,100\r2,11,5,101\r"
    assert len(read(write(tmp_path / "old_mac.csv", old_mac))) == 2
    tsv = b"userId\titemId\trating\ttimestamp\n1\tTitle, with comma\t4\t100\n"
    assert list(read(write(tmp_path / "events.tsv", tsv)).item_id) == ["Title, with comma"]
    utf16 = (HEADER + b"1,10,4,100\n2,11,5\n").decode().encode("utf-16")
    with pytest.raises(DataError, match="line 3 has 3 fields"):
        read(write(tmp_path / "utf16.csv", utf16), encoding="utf-16")


def test_an_items_title_with_an_unquoted_comma_is_one_error_not_shifted_ids(tmp_path):
    items = write(tmp_path / "movies.csv", b"movieId,title,genres\n1,Toy Story (1995),Animation\n2,American President, The (1995),Comedy\n")
    with pytest.raises(DataError, match="movies.csv: line 3 has 4 fields, the header has 3"):
        read_item_titles(items, item_col="movieId", title_col="title")
    with pytest.raises(DataError, match="line 3 has 4 fields"):
        read_feature_columns(items, id_col="movieId", feature_cols=["genres"], feature_sep="|")
    short = write(tmp_path / "short.csv", b"movieId,title,genres\n1,Toy Story (1995)\n")
    with pytest.raises(DataError, match="line 2 has 2 fields, the header has 3"):
        read_feature_columns(short, id_col="movieId", feature_cols=["genres"], feature_sep="|")
    quoted = write(tmp_path / "quoted.csv", b'movieId,title,genres\n2,"American President, The (1995)",\n')
    assert list(read_item_titles(quoted, item_col="movieId", title_col="title").title) == ["American President, The (1995)"]


def test_the_scan_counts_fields_as_the_csv_module_does_whatever_the_read_sizes():
    """Random rows with quoted separators, quoted line breaks, doubled and literal quotes, read a few bytes at
    a time so rows and quote runs straddle reads: a row is refused exactly when csv.reader counts another width."""
    rng = np.random.default_rng(0)
    cells = ["a", "", '"x,y"', '"l\nm"', '"q""r"', '5"', "b c", '""']
    for trial in range(200):
        lines = ["h1,h2,h3"] + [",".join(rng.choice(cells, size=3 if rng.random() < 0.95 else rng.integers(1, 5))) for _ in range(8)]
        content = ("\r\n" if trial % 2 else "\n").join(lines).encode()
        widths = [len(row) for row in csv.reader(io.StringIO(content.decode(), newline=""))]
        stream = FieldCheckedStream(io.BytesIO(content), Path("t.csv"), ",", "utf-8", None)
        size = int(rng.integers(1, 12))
        try:
            while stream.read(size):
                pass
            refused = False
        except DataError:
            refused = True
        assert refused == any(width not in (0, 3) for width in widths[1:]), content  # 0: a blank line, left to the reader


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "events.csv.gz.gz",
            gzip.compress(gzip.compress(HEADER + b"1,10,4,100\n")),
            "after decompressing .gz the content is still gzip data",
        ),
        ("events.csv", gzip.compress(HEADER + b"1,10,4,100\n"), "is gzip-compressed but its name does not say so; rename it to end in .gz"),
        ("events.csv.gz", bz2.compress(HEADER + b"1,10,4,100\n"), "cannot be decompressed"),
    ],
    ids=["gz_gz", "gz_named_csv", "bz2_named_gz"],
)
def test_compressed_twice_or_under_a_plain_name_says_so(tmp_path, name, content, message):
    with pytest.raises(DataError, match=message):
        read(write(tmp_path / name, content))


def datamodule(tmp_path: Path, content: bytes, **options) -> CsvDataModule:
    module = CsvDataModule(path=str(write(tmp_path / "events.csv", content)), split="leave_one_out", **options)
    module.setup()
    return module


def planted_rows(with_timestamps: bool) -> list[str]:
    """Ten users with five positives each (so leave-one-out leaves every part something), and item 9 once."""
    rows = [f"{user},{item},1" + (f",{10 * item}" if with_timestamps else "") for user in range(10) for item in range(5)]
    return [*rows, "1,9,1" + (",50" if with_timestamps else "")]


@pytest.mark.parametrize("with_timestamps", [True, False])
@pytest.mark.parametrize("order", ["positive_then_negative", "negative_then_positive"])
def test_the_latest_row_of_a_pair_wins_whatever_its_target(tmp_path, caplog, with_timestamps, order):
    header = "userId,itemId,target" + (",timestamp" if with_timestamps else "")
    first, then = ("1", "0") if order == "positive_then_negative" else ("0", "1")
    stamps = (",1000", ",2000") if with_timestamps else ("", "")
    rows = planted_rows(with_timestamps) + [f"0,9,{first}{stamps[0]}", f"0,9,{then}{stamps[1]}"]
    with caplog.at_level(logging.WARNING):
        module = datamodule(tmp_path, "\n".join([header, *rows]).encode())
    assert "dropped 1 repeated (user, item) rows of 1 pairs, keeping the latest" in caplog.text
    items, user = list(module.interactions.item_ids), list(module.interactions.user_ids).index(0)
    pair = (user, items.index(9))
    negatives = {tuple(negative) for negative in module.training_data.explicit_negatives.tolist()}
    positives = set(zip(module.interactions.users.tolist(), module.interactions.items.tolist()))
    if then == "0":  # a negative only: in none of train, valid and test, and trained as label 0
        assert pair not in positives and negatives == {pair}
    else:
        assert pair in positives and not negatives


def test_timestamps_decide_before_file_order(tmp_path):
    """A negative written later in the file but timed earlier is the older row: the positive wins."""
    rows = planted_rows(True) + ["0,9,1,2000", "0,9,0,1000"]
    module = datamodule(tmp_path, "\n".join(["userId,itemId,target,timestamp", *rows]).encode())
    items, user = list(module.interactions.item_ids), list(module.interactions.user_ids).index(0)
    assert (user, items.index(9)) in set(zip(module.interactions.users.tolist(), module.interactions.items.tolist()))
    assert len(module.training_data.explicit_negatives) == 0


def test_a_held_out_files_negatives_are_not_trained_on(tmp_path):
    pairs = [(user, item) for user in range(4) for item in range(5) if (user, item) not in {(0, 4), (1, 4)}]
    rows = [f"{user},{item},1" for user, item in [*pairs, (2, 5), (3, 5), (0, 6)]] + ["0,5,0"]
    train = write(tmp_path / "train.csv", "\n".join(["userId,itemId,target", *rows]).encode())
    valid = write(tmp_path / "valid.csv", b"userId,itemId,target\n0,4,1\n1,4,1\n1,5,0\n")
    module = CsvDataModule(train_path=str(train), valid_path=str(valid))
    module.setup()
    items, users = list(module.interactions.item_ids), list(module.interactions.user_ids)
    assert module.training_data.explicit_negatives.tolist() == [[users.index(0), items.index(5)]]


def test_item_and_user_column_being_one_column_is_refused_before_any_file_is_read(tmp_path):
    with pytest.raises(ConfigError, match="data.user_col and data.item_col both name the column 'userId'"):
        CsvDataModule(path=str(tmp_path / "events.csv"), item_col="userId").setup()
    with pytest.raises(ConfigError, match="data.item_col and data.rating_col both name the column 'itemId'"):
        CsvDataModule(path=str(tmp_path / "events.csv"), rating_col="itemId").setup()


@pytest.mark.parametrize("sep", ["::", '"', "\n", "§"])
def test_a_separator_the_scan_cannot_follow_is_refused_before_any_file_is_read(tmp_path, sep):
    with pytest.raises(ConfigError, match="must be one ASCII character other than a quote or line break"):
        CsvDataModule(path=str(tmp_path / "events.csv"), sep=sep).setup()


def test_an_items_file_whose_ids_match_nothing_is_one_error_showing_both_sides(tmp_path):
    events = "\n".join(["userId,itemId,rating", *planted_rows(False)]).encode()
    items = write(tmp_path / "items.csv", b"itemId,title,genres\ntt01,A,Drama\ntt02,B,Comedy\n")
    for options in ({}, {"item_features": ["genres"]}):
        with pytest.raises(
            DataError, match=r"items.csv: none of its item ids \(column 'itemId'\) is an item id of the interactions \(e.g. 'tt01'"
        ):
            datamodule(tmp_path, events, items_path=str(items), **options)
    users = write(tmp_path / "users.csv", b"userId,country\nu1,FR\n")
    with pytest.raises(DataError, match=r"users.csv: none of its user ids \(column 'userId'\) is a user id .*e.g. 'u1'.* have e.g. 0\)"):
        datamodule(tmp_path, events, users_path=str(users), user_features=["country"])


def test_an_item_listed_twice_with_different_titles_is_one_error_naming_both_lines(tmp_path):
    items = write(tmp_path / "items.csv", b"itemId,title\n1,Heat (1995)\n2,Up (2009)\n1,Heat\n2,Up (2009)\n")
    with pytest.raises(
        DataError,
        match=r"items.csv: line 4: item '1' is listed again \(first on line 2\) with another 'title' \('Heat', before 'Heat \(1995\)'\)",
    ):
        read_item_titles(items, item_col="itemId", title_col="title")
    multi_line = write(tmp_path / "multi.csv", b'itemId,title\n1,"Heat\n(1995)"\n2,Up\n1,Heat\n')
    with pytest.raises(DataError, match=r"line 5: item '1' is listed again \(first on line 2\)"):  # row 3 starts on line 5
        read_item_titles(multi_line, item_col="itemId", title_col="title")
    same = write(tmp_path / "same.csv", b"itemId,title\n1,Heat (1995)\n1,Heat (1995)\n")
    assert len(read_item_titles(same, item_col="itemId", title_col="title")) == 2


@pytest.mark.slow
@pytest.mark.parametrize("case", ["shifted_row", "same_columns", "items_for_other_data"])
def test_the_entry_point_stops_with_one_line(tmp_path, case):
    rows = "\n".join(planted_rows(True)).encode()
    shifted = b"\nSmith, John,24,4,1600089286" if case == "shifted_row" else b""
    path = write(tmp_path / "events.csv", b"userId,itemId,rating,timestamp\n" + rows + shifted + b"\n")
    items = write(tmp_path / "items.csv", b"itemId,title,genres\ntt01,A,Drama\n")
    overrides = {
        "shifted_row": [],
        "same_columns": ["data.item_col=userId"],
        "items_for_other_data": [f"data.items_path={items}", "data.item_features=[genres]", "model.features=true"],
    }[case]
    result = run_module("recsys_lightning.train", "data=csv", f"data.path={path}", *overrides, f"paths.output_dir={tmp_path / 'out'}")
    expected = {
        "shifted_row": "events.csv: line 53 has 5 fields, the header has 4",
        "same_columns": "data.user_col and data.item_col both name the column 'userId'",
        "items_for_other_data": "items.csv: none of its item ids (column 'itemId') is an item id of the interactions (e.g. 'tt01'",
    }[case]
    assert result.returncode == 1 and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
