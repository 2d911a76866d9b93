"""Your own CSV files: column mapping, pre-split files, explicit negatives, k-core, and bad input."""

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_lightning.data.csv import CsvDataModule, infer_separator, read_interactions
from recsys_lightning.errors import DataError

from helpers import ROOT

GOOD = "userId,itemId,rating,timestamp\n" + "".join(
    f"u{u},i{(u * 7 + k) % 30},{1 + (u + k) % 5},{1000 + k}\n" for u in range(20) for k in range(12)
)


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_reads_string_ids_and_maps_columns(tmp_path):
    text = "customer;sku;ts\nalice;A-1;5\nbob;B-2;6\n"
    frame = read_interactions(write(tmp_path / "e.csv", text), user_col="customer", item_col="sku", timestamp_col="ts", sep=";")
    assert frame.user_id.tolist() == ["alice", "bob"] and frame.item_id.tolist() == ["A-1", "B-2"]
    assert frame.timestamp.tolist() == [5.0, 6.0] and frame.rating.tolist() == [1.0, 1.0]


def test_separator_from_extension_and_gzip(tmp_path):
    assert infer_separator(Path("x.tsv.gz")) == "\t" and infer_separator(Path("x.csv")) == ","
    path = tmp_path / "events.tsv.gz"
    path.write_bytes(gzip.compress(GOOD.replace(",", "\t").encode()))
    datamodule = CsvDataModule(path=str(path))
    datamodule.setup()
    assert datamodule.num_users == 20 and len(datamodule.interactions) == 240


def test_date_timestamps_order_a_temporal_split(tmp_path):
    text = "userId,itemId,timestamp\n" + "".join(f"u,i{k},2024-01-{k + 1:02d}T10:00:00\n" for k in range(10))
    datamodule = CsvDataModule(path=str(write(tmp_path / "d.csv", text)), split="temporal")
    datamodule.setup()
    test_items = datamodule.interactions.item_ids[datamodule.interactions.items[datamodule.split.test]]
    assert test_items.tolist() == ["i9"]


def test_pre_split_files_are_used_as_given_and_unseen_rows_left_out(tmp_path, caplog):
    train = write(tmp_path / "train.csv", "userId,itemId\n" + "".join(f"u{u},i{i}\n" for u in range(5) for i in range(u, u + 6)))
    valid = write(tmp_path / "valid.csv", "userId,itemId\nu0,i9\nu1,i9\nghost,i1\nu2,unknown\n")
    datamodule = CsvDataModule(train_path=str(train), valid_path=str(valid))
    datamodule.setup()
    assert len(datamodule.split.train) == 30 and len(datamodule.split.valid) == 2
    assert not datamodule.has_test
    assert "2 valid/test rows have a user or item absent from train" in caplog.text


def test_target_zero_rows_are_explicit_negatives_never_positives(tmp_path):
    rows = "".join(f"u{u},i{i},{int(i % 3 != 0)}\n" for u in range(10) for i in range(12))
    datamodule = CsvDataModule(path=str(write(tmp_path / "t.csv", "userId,itemId,target\n" + rows)))
    datamodule.setup()
    positives = set(datamodule.interactions.item_ids[datamodule.interactions.items])
    assert positives.isdisjoint({"i0", "i3", "i6", "i9"})
    assert len(datamodule.training_data.explicit_negatives) == 0  # those items have no positive, so no index either
    rows = "".join(f"u{u},i{i},{int((u + i) % 3 != 0)}\n" for u in range(10) for i in range(12))
    datamodule = CsvDataModule(path=str(write(tmp_path / "t2.csv", "userId,itemId,target\n" + rows)))
    datamodule.setup()
    negatives = datamodule.training_data.explicit_negatives.numpy()
    assert len(negatives) == 40 and ((negatives[:, 0] + negatives[:, 1]) >= 0).all()


def test_k_core_is_iterative(tmp_path):
    # u0 has 3 items; i2 is held only by u0. Dropping i2 (min_item 2) leaves u0 with 2 < 3: u0 goes too.
    rows = ["u0,i0", "u0,i1", "u0,i2"] + [f"u{u},i{i}" for u in range(1, 6) for i in (0, 1, 3)]
    datamodule = CsvDataModule(
        path=str(write(tmp_path / "k.csv", "userId,itemId\n" + "\n".join(rows) + "\n")),
        min_user_interactions=3,
        min_item_interactions=2,
        split="leave_one_out",
    )
    datamodule.setup()
    assert "u0" not in set(datamodule.interactions.user_ids) and "i2" not in set(datamodule.interactions.item_ids)


BAD_INPUTS = {
    "missing_file": (None, "file not found"),
    "empty": ("", "file is empty"),
    "header_only": ("userId,itemId,rating\n", "has a header but no rows"),
    "misnamed_column": ("user,itemId\n1,2\n", "no column 'userId'; columns found: 'user', 'itemId'"),
    "non_numeric_rating": ("userId,itemId,rating\n1,2,5\n1,3,great\n", "line 3: 'rating' is 'great', not a number"),
    "target_outside_0_1": ("userId,itemId,target\n1,2,1\n1,3,2\n", "line 3: 'target' is 2; targets must be 0 or 1"),
    "empty_id": ("userId,itemId\n1,2\n,3\n", "line 3: empty 'userId'"),
    "wrong_separator": ("userId;itemId\n1;2\n", "only one column found ('userId;itemId')"),
    "corrupt_gzip": (b"\x1f\x8b\x08\x00garbage-not-deflate", "cannot be decompressed or read"),
    "not_utf8": ("userId,itemId\nJos\xe9,1\n".encode("latin-1"), "not utf-8 text"),
    "only_negatives": ("userId,itemId,target\n1,2,0\n1,3,0\n", "every row has target 0"),  # found by hypothesis
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_data_error_naming_file_and_problem(case, tmp_path):
    content, message = BAD_INPUTS[case]
    path = tmp_path / ("x.csv.gz" if case == "corrupt_gzip" else "x.csv")
    if content is not None:
        write(path, content)
    with pytest.raises(DataError, match="x.csv") as error:
        CsvDataModule(path=str(path)).setup()
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_item_titles_come_from_an_items_file(tmp_path):
    items = write(tmp_path / "items.tsv", "itemId\tname\n" + "".join(f"i{i}\tFilm {i}, part 2\n" for i in range(0, 30, 2)))
    datamodule = CsvDataModule(path=str(write(tmp_path / "g.csv", GOOD)), items_path=str(items), title_col="name")
    datamodule.setup()
    catalogue = datamodule.training_data.catalogue
    assert catalogue.titles[catalogue.item_index("i4")] == "Film 4, part 2"
    assert catalogue.titles[catalogue.item_index("i5")] == ""  # not in the items file
    with pytest.raises(DataError, match="items.tsv: no column 'title'"):
        CsvDataModule(path=str(tmp_path / "g.csv"), items_path=str(items)).setup()


def test_every_user_filtered_by_k_core_is_an_error(tmp_path):
    with pytest.raises(DataError, match="removed every interaction; lower those thresholds"):
        CsvDataModule(path=str(write(tmp_path / "g.csv", GOOD)), min_user_interactions=50).setup()


def test_duplicate_rows_warn_and_are_deduplicated(tmp_path, caplog):
    datamodule = CsvDataModule(path=str(write(tmp_path / "dup.csv", GOOD + GOOD.split("\n", 1)[1])))
    datamodule.setup()
    assert len(datamodule.interactions) == 240
    assert "dropped 240 repeated (user, item) rows" in caplog.text


# Through the entry point, one bad input per stage where the data build can fail (opening, decompressing;
# k-core filtering, pre-split files and a parsed value further down): each BAD_INPUTS message is checked in
# process above, and every DataError reaches the same one-line exit, so running all of them again as
# subprocesses (80 s) would test that exit eleven times.
ENTRY_POINT_INPUTS = ("missing_file", "corrupt_gzip")


def entry_point_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    cases = {}
    for case in ENTRY_POINT_INPUTS:
        content, message = BAD_INPUTS[case]
        path = tmp_path / case / ("x.csv.gz" if case == "corrupt_gzip" else "x.csv")
        path.parent.mkdir()
        if content is not None:
            write(path, content)
        cases[case] = ([f"data.path={path}"], message)
    good = write(tmp_path / "good.csv", GOOD)
    unseen_test = write(tmp_path / "unseen.csv", "userId,itemId\nstranger,i1\n")
    cases["k_core_removes_all"] = ([f"data.path={good}", "data.min_user_interactions=99"], "removed every interaction")
    cases["test_file_all_unseen"] = (
        [f"data.train_path={good}", f"data.valid_path={unseen_test}"],
        "no validation interaction is left",
    )
    cases["test_file_is_train_file"] = (
        [f"data.train_path={good}", f"data.valid_path={unseen_test}", f"data.test_path={tmp_path}/../{tmp_path.name}/good.csv"],
        "data.test_path and data.train_path are the same file",
    )
    infinite = write(tmp_path / "infinite.csv", GOOD + "u1,i2,inf,5\n")
    cases["infinite_rating"] = ([f"data.path={infinite}"], "line 242: 'rating' is inf, not a finite number")
    return cases


@pytest.mark.slow
def test_bad_inputs_through_the_entry_point_exit_1_with_one_line(tmp_path):
    """One bad input per stage (ENTRY_POINT_INPUTS), run as a user would; the runs go two at a time (two cores)."""
    cases = entry_point_cases(tmp_path)
    results = {}
    pending = list(cases.items())
    while pending:
        running = []
        for case, (overrides, _) in pending[:2]:
            output_dir = tmp_path / "outputs" / case
            command = [sys.executable, "-m", "recsys_lightning.train", "data=csv", *overrides, f"paths.output_dir={output_dir}"]
            running.append(
                (case, output_dir, subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            )
        pending = pending[2:]
        for case, output_dir, process in running:
            _, stderr = process.communicate(timeout=300)
            results[case] = (process.returncode, stderr, output_dir)
    for case, (returncode, stderr, output_dir) in results.items():
        assert returncode == 1, (case, stderr[-1500:])
        last_line = stderr.strip().splitlines()[-1]
        assert last_line.startswith("error: ") and cases[case][1] in last_line, (case, last_line)
        assert "Traceback" not in stderr, case
        assert not list(output_dir.glob("**/metrics.json")) and not list(output_dir.glob("**/*.ckpt")), case
