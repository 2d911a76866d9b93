"""Generated CSVs, well-formed or not: the DataModule either loads them or raises the project's error."""

import gzip
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys_lightning.data.csv import CsvDataModule
from recsys_lightning.errors import RecsysError

COLUMNS = ["userId", "itemId", "rating", "timestamp", "target", "extra"]
SEPARATORS = [",", ";", "\t", "|"]
cells = st.one_of(
    st.integers(-2, 6).map(str),
    st.sampled_from(["", "nan", "inf", "1.5", "0", "1", "2024-01-02", "yes", '"', '""', "a,b", "é"]),
    st.text(alphabet="ab01,;|\t\"' \n", max_size=4),
)


@st.composite
def csv_files(draw):
    columns = draw(st.lists(st.sampled_from(COLUMNS), min_size=0, max_size=6, unique=True))
    if draw(st.booleans()):  # most files should get past the header, to exercise the rows
        columns = ["userId", "itemId"] + [c for c in columns if c not in ("userId", "itemId")]
    separator = draw(st.sampled_from(SEPARATORS))
    rows = draw(st.lists(st.lists(cells, min_size=len(columns), max_size=len(columns) + 1), max_size=40))
    if draw(st.booleans()):  # and some should be valid interaction tables
        rows = [
            [str(draw(st.integers(0, 6))) if c in ("userId", "itemId") else "1" for c in columns] for _ in range(draw(st.integers(0, 60)))
        ]
    text = separator.join(columns) + "\n" + "".join(separator.join(row) + "\n" for row in rows)
    encoding = draw(st.sampled_from(["utf-8", "latin-1", "gzip", "truncated-gzip"]))
    data = text.encode("latin-1", errors="replace") if encoding == "latin-1" else text.encode()
    if encoding.endswith("gzip"):
        data = gzip.compress(data)
        data = data[: len(data) // 2] if encoding == "truncated-gzip" else data
    suffix = ".csv.gz" if encoding.endswith("gzip") else ".csv"
    pass_separator = draw(st.integers(0, 3)) > 0  # mostly: a wrong separator ends the story at the header
    return data, suffix, separator if pass_separator else None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(csv_files())
def test_generated_csv_loads_or_raises_project_error(case):
    data, suffix, separator = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"generated{suffix}"
        path.write_bytes(data)
        datamodule = CsvDataModule(path=str(path), sep=separator, split="leave_one_out")
        try:
            datamodule.setup()
        except RecsysError as error:
            message = str(error)
            assert message and "\n" not in message
            assert str(path) in message or "validation" in message or "every item" in message, message
            return
        assert len(datamodule.split.train) > 0 and len(datamodule.split.valid) > 0
        assert datamodule.train_positives.indices.max() < datamodule.num_items
