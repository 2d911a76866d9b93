"""The one comparison of a checkpoint's data with a run's (resume, evaluate, warm starts, two stages), the one
check that a checkpoint records its data at all, and the one device helper of the entry points that load runs."""

import pytest
import torch

from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.errors import ConfigError
from recsys_lightning.runs.checkpoint_file import recorded_catalogue
from recsys_lightning.runs.same_data import same_ids, same_training_data, same_training_pairs
from recsys_lightning.runs.trained_run import torch_device

from helpers import FrameDataModule, planted_frame


def split(seed: int):
    datamodule = FrameDataModule(planted_frame(), seed=seed)
    datamodule.setup("fit")
    return datamodule.training_data


def test_the_same_data_matches_and_another_split_of_it_does_not():
    data, other_split = split(seed=0), split(seed=1)
    catalogue, train = data.catalogue, data.positives.csr
    assert same_ids(catalogue, other_split.catalogue)  # the same users and items ...
    assert same_training_pairs(catalogue, train) and same_training_data(catalogue, data)
    assert not same_training_pairs(catalogue, other_split.positives.csr)  # ... split otherwise
    assert not same_training_data(catalogue, other_split)
    wider = UserItemCSR(train.indptr, train.indices, train.num_items + 1)  # the same pairs in a larger catalogue
    assert not same_training_pairs(catalogue, wider)


def test_a_checkpoint_without_a_catalogue_is_one_line_naming_where_and_what_to_do():
    with pytest.raises(ConfigError) as error:
        recorded_catalogue({"state_dict": {}}, "run.ckpt", "retrain the run", where="ckpt_path=run.ckpt")
    assert str(error.value) == (
        "ckpt_path=run.ckpt: carries no record of the data it was trained on (no catalogue: an older version wrote it); retrain the run"
    )
    catalogue = split(seed=0).catalogue
    assert recorded_catalogue({"catalogue": catalogue.to_state()}, "run.ckpt", "retrain").item_ids.equals(catalogue.item_ids)


def test_device_names_of_recommend_and_evaluate_map_to_torch_devices(monkeypatch):
    assert [torch_device(name) for name in ("cpu", "gpu", "cuda", "cuda:1")] == [
        torch.device("cpu"),
        torch.device("cuda"),
        torch.device("cuda"),
        torch.device("cuda:1"),
    ]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch_device("auto") == torch.device("cuda")
