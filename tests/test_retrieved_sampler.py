"""sampler=retrieved: a re-ranker's negatives drawn from a retriever run's top candidates for the user."""

import pytest
import torch

from recsys_lightning.build import build_module
from recsys_lightning.errors import ConfigError
from recsys_lightning.runs.checkpoint_file import find_checkpoint
from recsys_lightning.runs.trained_run import load_trained
from recsys_lightning.samplers import RetrievedSampler
from recsys_lightning.validation import check_training_config

from helpers import FrameDataModule, module_config, planted_frame, quiet_trainer, trained_run_folder, training_config

NCF = {"_target_": "recsys_lightning.models.NeuMF", "gmf_dim": 8, "mlp_dim": 8, "hidden": [8]}


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    return trained_run_folder(tmp_path_factory.mktemp("retriever"), FrameDataModule(planted_frame(), batch_size=256), module_config())


@pytest.fixture
def positives():
    datamodule = FrameDataModule(planted_frame())
    datamodule.setup("fit")
    return datamodule.training_data.positives


def bound(run_dir, positives, candidates=12, num_negatives=50) -> RetrievedSampler:
    sampler = RetrievedSampler(num_negatives=num_negatives, run_dir=str(run_dir), candidates=candidates)
    sampler.bind(positives)
    sampler.reseed(0)
    return sampler


def retrievers_top(run_dir, positives, n: int) -> list[set[int]]:
    """Each user's n best items by the retriever, training positives left out, one user at a time."""
    scores = load_trained(find_checkpoint(run_dir)).model.score_all(torch.arange(positives.num_users)).detach()
    top = []
    for user in range(positives.num_users):
        held = set(positives.csr.indices[positives.csr.indptr[user] : positives.csr.indptr[user + 1]].tolist())
        ranked = [item for item in scores[user].argsort(descending=True).tolist() if item not in held]
        top.append(set(ranked[:n]))
    return top


def test_negatives_are_the_retrievers_candidates_and_never_a_training_positive(retriever, positives):
    sampler = bound(retriever, positives)
    users = torch.repeat_interleave(torch.arange(positives.num_users), positives.csr.counts())
    negatives = sampler.sample(users, positives.csr.indices, model=None)
    assert negatives.shape == (len(users), 50) and negatives.dtype == torch.long
    assert not positives.contains(users, negatives).any()
    top = retrievers_top(retriever, positives, 12)
    for user in range(positives.num_users):
        drawn = set(negatives[users == user].flatten().tolist())
        assert drawn <= top[user]
        assert len(drawn) == 12  # 50 draws per positive, 16 positives: every candidate comes up


def test_more_candidates_than_unseen_items_draws_every_unseen_item_only(retriever, positives):
    sampler = bound(retriever, positives, candidates=1000)
    users = torch.arange(positives.num_users).repeat_interleave(20)
    negatives = sampler.sample(users, users, model=None)
    assert not positives.contains(users, negatives).any()
    unseen = positives.num_items - positives.csr.counts()
    assert sampler.table.shape == (positives.num_users, positives.num_items)
    assert torch.equal(sampler.num_found, unseen)


def test_same_seed_same_negatives(retriever, positives):
    users = torch.arange(positives.num_users)
    first, second = (bound(retriever, positives).sample(users, users, model=None) for _ in range(2))
    assert torch.equal(first, second)


def test_a_retriever_of_another_split_is_refused_in_one_line(tmp_path, positives):
    other = trained_run_folder(tmp_path, FrameDataModule(planted_frame(), batch_size=256, seed=7), module_config())
    with pytest.raises(ConfigError) as error:
        bound(other, positives)
    message = str(error.value)
    assert message.startswith(f"sampler.run_dir={other}: trained on other data or another split") and "\n" not in message


def test_no_retriever_or_a_missing_one_is_one_line(tmp_path, positives):
    with pytest.raises(ConfigError, match="sampler=retrieved needs the retriever's run: sampler.run_dir="):
        RetrievedSampler().bind(positives)
    with pytest.raises(ConfigError, match="^sampler.run_dir: run_dir=.*: no such folder"):
        bound(tmp_path / "missing", positives)


def test_a_reranker_trains_on_retrieved_negatives(retriever, tmp_path):
    datamodule = FrameDataModule(planted_frame(), batch_size=256)
    datamodule.setup("fit")
    config = module_config(model=NCF, sampler={"_target_": "recsys_lightning.samplers.RetrievedSampler", "run_dir": str(retriever)})
    module = build_module(config, datamodule.training_data)
    before = [parameter.detach().clone() for parameter in module.parameters()]
    quiet_trainer(max_epochs=1, enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path).fit(
        module, datamodule=datamodule
    )
    assert module.sampler.table.shape == (60, 100)  # candidates default to 200, cut to the catalogue
    assert any(not torch.equal(old, new) for old, new in zip(before, module.parameters()))


def test_the_config_option_passes_validation_and_its_keys_are_checked():
    check_training_config(training_config("sampler=retrieved", "sampler.run_dir=outputs/runs/x"))
    with pytest.raises(ConfigError, match="sampler.candidates=0: must be an integer >= 1"):
        check_training_config(training_config("sampler=retrieved", "sampler.candidates=0"))
    with pytest.raises(ConfigError, match="cannot train with RetrievedSampler"):
        check_training_config(training_config("sampler=retrieved", "loss=mse"))
