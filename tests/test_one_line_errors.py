"""Text an error echoes from a file (a header cell, an id, a file name) is shown escaped: every message is one
line, and a file cannot put a newline or a terminal's escape code into it (issue 27)."""

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from recsys_lightning.data.csv import CsvDataModule, read_feature_columns, read_item_titles
from recsys_lightning.data.features import FeatureColumns, index_features
from recsys_lightning.errors import ConfigError, DataError, RecsysError
from recsys_lightning.runs.checkpoint_file import find_checkpoint
from recsys_lightning.serving.arguments import check_serving_config

from helpers import compose_config


def test_every_project_error_escapes_what_is_not_printable():
    error = DataError("cells 'a\nb', '\x1b[31mred', 'tab\there', 'line\u2028separator', 'café'")
    assert str(error) == "cells 'a\\nb', '\\x1b[31mred', 'tab\\there', 'line\\u2028separator', 'café'"
    assert str(ConfigError("plain text stays as it is")) == "plain text stays as it is"


def test_an_items_file_header_cell_is_quoted_and_escaped(tmp_path):
    path = tmp_path / "items.csv"
    path.write_bytes(b'itemId,"ti\ntle"\n1,A\n')
    with pytest.raises(DataError) as error:
        read_item_titles(path, item_col="itemId", title_col="title")
    assert str(error.value) == f"{path}: no column 'title'; columns found: 'itemId', 'ti\\ntle'. Set data.title_col to the right one"


def test_a_features_file_header_cell_is_quoted_and_escaped(tmp_path):
    path = tmp_path / "items.csv"
    path.write_bytes(b'itemId,"gen\x1bre"\n1,A\n')
    with pytest.raises(DataError) as error:
        read_feature_columns(path, id_col="itemId", feature_cols=["genre"], feature_sep="|")
    assert str(error.value) == f"{path}: no column 'genre'; columns found: 'itemId', 'gen\\x1bre'. Set data.item_features to the right one"


def test_feature_ids_none_of_which_match_are_shown_escaped():
    columns = FeatureColumns("items.csv", pd.Series(["7\n8"], name="itemId"), pd.DataFrame({"genre": ["A"]}), sep=None, first_line=2)
    with pytest.raises(DataError) as error:
        index_features(columns, np.array(["1", "2"], dtype=object), "item")
    assert "\n" not in str(error.value) and "(e.g. '7\\n8';" in str(error.value)


def test_why_ratings_are_missing_lists_the_header_escaped(tmp_path):
    path = tmp_path / "interactions.csv"
    rows = "".join(f"{user},{item},5\n" for user in range(4) for item in range(6))
    path.write_text('userId,itemId,"rat\ning"\n' + rows)
    loaded = CsvDataModule(path=str(path)).load()
    assert loaded.ratings_missing == (
        f"{path} has no rating column 'rating' (columns: 'userId', 'itemId', 'rat\\ning'): "
        "set data.rating_col to the column holding ratings"
    )


def test_a_serving_argument_is_shown_escaped():
    config = compose_config("recommend", "run_dir=run", "users=all")
    OmegaConf.update(config, "output", "/no\nfolder/recs.csv")
    with pytest.raises(ConfigError) as error:
        check_serving_config(config)
    assert str(error.value).startswith("output=/no\\nfolder/recs.csv: folder /no\\nfolder does not exist")


def test_checkpoint_file_names_in_a_run_folder_are_shown_escaped(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for name in ("epoch000\n.ckpt", "epoch001.ckpt"):
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    with pytest.raises(RecsysError) as error:
        find_checkpoint(tmp_path, "best")
    assert "\n" not in str(error.value) and "epoch000\\n.ckpt" in str(error.value)
