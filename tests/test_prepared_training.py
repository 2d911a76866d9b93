"""data=prepared: each rank trains and evaluates on its own share of users, and one rank is one process.

The shares are cut in memory from a set-up single-process datamodule (helpers.MemoryShares), as
`prepare` cuts a folder, so every claim is checked against the single-process answer."""

from __future__ import annotations

import json
import os
import re
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from recsys_lightning.build import build_module
from recsys_lightning.data.batches import EpochBatchSampler, ShareBatchSampler
from recsys_lightning.data.catalogue_reference import CatalogueReference
from recsys_lightning.data.movielens import MovieLensDataModule
from recsys_lightning.data.positives import TrainingPositives
from recsys_lightning.errors import ConfigError, DataError
from recsys_lightning.prepared.datamodule import PreparedDataModule, launched_rank, sampled_validation_users
from recsys_lightning.prepared.folder import PreparedFolder
from recsys_lightning.prepared.share import TEST, VALID
from recsys_lightning.prepared.write import write_prepared
from recsys_lightning.runs.checkpoint_file import load_checkpoint
from recsys_lightning.runs.same_data import same_training_data
from recsys_lightning.seeds import stream_seed
from recsys_lightning.train import train
from recsys_lightning.validation import check_prepared_data, check_training_config

from helpers import (
    ROOT,
    SMALL_DATA,
    FrameDataModule,
    MemoryShares,
    quiet_trainer,
    random_interactions,
    run_module,
    torchrun,
    training_config,
)


def shares_of(datamodule, world: int, **settings) -> list[PreparedDataModule]:
    """Every rank's PreparedDataModule over `datamodule`'s data cut into `world` shares."""
    source = MemoryShares(datamodule)
    ranks = []
    for rank in range(world):
        prepared = PreparedDataModule.from_source(source, **settings)
        prepared.read_share(rank, world)
        ranks.append(prepared)
    return ranks


@pytest.fixture(scope="module")
def small():
    datamodule = FrameDataModule(random_interactions(num_users=50, num_items=40, per_user=12, seed=3), batch_size=64)
    datamodule.setup("fit")
    return datamodule


@pytest.fixture(scope="module")
def movielens():
    datamodule = MovieLensDataModule(str(ROOT / "data"))
    datamodule.setup("fit")
    return datamodule


def epoch_pairs(prepared: PreparedDataModule, epoch: int) -> list[tuple[int, int]]:
    loader = prepared.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [pair for batch in loader for pair in zip(batch.users.tolist(), batch.items.tolist())]


def test_one_rank_batches_are_the_single_process_batches_of_movielens(movielens):
    (prepared,) = shares_of(movielens, 1)
    assert prepared.batch_size == movielens.batch_size == 4096
    assert prepared.steps_per_epoch == movielens.steps_per_epoch
    single_loader, loader = movielens.train_dataloader(), prepared.train_dataloader()
    for epoch in (0, 1):
        single_loader.sampler.set_epoch(epoch)
        loader.sampler.set_epoch(epoch)
        single, share = list(single_loader), list(loader)
        assert len(single) == len(share) == prepared.steps_per_epoch
        for expected, batch in zip(single, share):
            assert torch.equal(expected.users, batch.users) and torch.equal(expected.items, batch.items)
            assert torch.equal(expected.ratings, batch.ratings)


@pytest.mark.slow
def test_one_rank_trains_to_the_single_process_metrics_of_movielens(movielens):
    """Two MF epochs from the same initialisation: the same batches and negatives give the same model."""
    (prepared,) = shares_of(movielens, 1)
    cfg = training_config("trainer.max_epochs=2")
    results = []
    for datamodule in (movielens, prepared):
        pl.seed_everything(stream_seed(cfg.seed, "init") % 2**32)
        module = build_module(cfg, datamodule.training_data)
        trainer = quiet_trainer(max_epochs=2, enable_checkpointing=False, num_sanity_val_steps=0)
        trainer.fit(module, datamodule=datamodule)
        trainer.validate(module, datamodule=datamodule, verbose=False)
        validated = {name: value.item() for name, value in trainer.callback_metrics.items() if name.startswith("val/")}
        results.append({**validated, **trainer.test(module, datamodule=datamodule, verbose=False)[0]})
    assert results[0] == results[1]
    assert results[0]["val/ndcg@10"] > 0.02  # it learnt something


def test_one_rank_builds_the_single_process_catalogue(movielens):
    (prepared,) = shares_of(movielens, 1)
    catalogue, expected = prepared.training_data.catalogue, movielens.training_data.catalogue
    assert catalogue.user_ids.equals(expected.user_ids) and catalogue.item_ids.equals(expected.item_ids)
    assert torch.equal(catalogue.seen.indptr, expected.seen.indptr) and torch.equal(catalogue.seen.indices, expected.seen.indices)
    assert torch.equal(catalogue.seen.values, expected.seen.values) and torch.equal(catalogue.popularity, expected.popularity)
    assert catalogue.titles == expected.titles
    assert same_training_data(expected, prepared.training_data)


@pytest.mark.parametrize("world", [2, 3])
def test_every_training_pair_once_per_epoch_across_ranks_in_equal_steps(small, world):
    ranks = shares_of(small, world, batch_size=64)
    expected = sorted(zip(small.interactions.users[small.split.train].tolist(), small.interactions.items[small.split.train].tolist()))
    for epoch in (0, 1):
        assert sorted(pair for prepared in ranks for pair in epoch_pairs(prepared, epoch)) == expected
    steps = {len(prepared.train_dataloader()) for prepared in ranks}
    assert steps == {ranks[0].steps_per_epoch} == {-(-max(MemoryShares(small).train_rows_per_rank(world)) // (64 // world))}
    for prepared in ranks:
        assert prepared.batch_size == 64 and prepared.rank_batch_size == 64 // world
        assert max(len(batch) for batch in prepared.train_dataloader()) <= prepared.rank_batch_size


def test_a_share_that_cannot_fill_batches_of_the_per_rank_size_is_cut_into_as_many_near_equal_ones():
    batches = list(ShareBatchSampler(num_samples=10, batch_size=4, steps=4, seed=0, rank=1))
    assert [len(batch) for batch in batches] == [3, 3, 2, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))


def test_rank_zero_orders_its_epoch_as_the_single_process_sampler_does():
    for epoch in (0, 3):
        single, share = EpochBatchSampler(1000, 64, seed=5), ShareBatchSampler(1000, 64, 16, seed=5)
        single.set_epoch(epoch)
        share.set_epoch(epoch)
        assert all(torch.equal(a, b) for a, b in zip(single, share, strict=True))


def test_positives_of_a_share_answer_as_the_global_ones_for_its_users(small):
    """contains, held, coordinates and uniform_unseen take global users; item_counts are the global ones."""
    whole = small.training_data.positives
    for prepared in shares_of(small, 3)[1:]:
        local = prepared.training_data.positives
        assert local.first_user > 0 and local.num_users == prepared.share_users
        assert torch.equal(local.item_counts, whole.item_counts)
        users = torch.arange(local.first_user, local.first_user + local.num_users).repeat(3)
        items = torch.randint(0, small.num_items, (len(users), 7), generator=torch.Generator().manual_seed(0))
        assert torch.equal(local.contains(users, items), whole.contains(users, items))
        assert torch.equal(local.held(users, items[0]), whole.held(users, items[0]))
        assert all(torch.equal(a, b) for a, b in zip(local.coordinates(users), whole.coordinates(users)))
        drawn = [positives.uniform_unseen(users, (5,), torch.Generator().manual_seed(1)) for positives in (local, whole)]
        assert torch.equal(drawn[0], drawn[1]) and not whole.contains(users, drawn[1]).any()


def test_positives_of_one_process_are_unchanged_by_the_share_fields(small):
    whole = small.training_data.positives
    again = TrainingPositives.from_csr(whole.csr)
    assert again.first_user == 0 and torch.equal(again.item_counts, torch.bincount(whole.csr.indices, minlength=whole.num_items))
    users = torch.tensor([0, 3, 7])
    assert again.local(users) is users  # no copy on the single-process path


@pytest.mark.parametrize("part", ["valid", "test"])
def test_ranking_chunks_of_all_ranks_together_are_the_single_process_chunks(small, part):
    def pairs(chunks, rows: str, items: str) -> list[tuple[int, int]]:
        return sorted(
            (int(chunk.users[row]), int(item)) for chunk in chunks for row, item in zip(getattr(chunk, rows), getattr(chunk, items))
        )

    single = list(small.ranking_chunks(part))
    ranks = [list(prepared.ranking_chunks(part)) for prepared in shares_of(small, 3, eval_chunk_size=4)]
    assert torch.cat([chunk.users for chunks in ranks for chunk in chunks]).tolist() == torch.cat([c.users for c in single]).tolist()
    for rows, items in (("exclude_rows", "exclude_items"), ("heldout_rows", "heldout_items")):
        assert [pair for chunks in ranks for pair in pairs(chunks, rows, items)] == pairs(single, rows, items)


@pytest.mark.parametrize("world, largest", [(1, 8), (2, 4), (3, 3)])
def test_the_evaluation_chunk_is_global_each_rank_scoring_its_wth_of_it(small, world, largest):
    """eval_chunk_size=8 over W ranks: a rank scores at most ceil(8 / W) users at a time, so its score matrix
    shrinks as ranks are added (as batch_size is split, not repeated)."""
    for prepared in shares_of(small, world, eval_chunk_size=8):
        sizes = [len(chunk.users) for chunk in prepared.ranking_chunks("test")]
        tested = int((prepared.test_positives.counts() > 0).sum())
        assert max(sizes) == largest and sum(sizes) == tested


def test_val_users_keeps_about_n_users_decided_per_user_the_same_on_every_call():
    users = np.arange(200_000)
    kept = sampled_validation_users(users, 5_000, len(users), seed=7)
    assert abs(int(kept.sum()) - 5_000) < 300  # binomial: sd about 70
    halves = np.concatenate([sampled_validation_users(half, 5_000, len(users), seed=7) for half in np.split(users, 2)])
    assert np.array_equal(kept, halves)  # each rank decides for its own users alone
    assert not np.array_equal(kept, sampled_validation_users(users, 5_000, len(users), seed=8))


def test_val_users_samples_each_ranks_own_validation_users(small):
    ranks = shares_of(small, 2, val_users=20)
    chosen = [prepared.validation_users() + prepared.first_user for prepared in ranks]
    assert all(torch.equal(a, prepared.validation_users() + prepared.first_user) for a, prepared in zip(chosen, ranks))
    every = torch.nonzero(small.valid_positives.counts() > 0).flatten()
    together = torch.cat(chosen)
    assert 8 <= len(together) < len(every) and bool(torch.isin(together, every).all())


def test_several_ranks_record_a_reference_to_the_prepared_data(small):
    catalogue = shares_of(small, 2)[1].training_data.catalogue
    assert isinstance(catalogue, CatalogueReference)
    assert catalogue.to_state() == {"version": 1, "prepared": {"path": "/memory", "manifest_sha256": "0" * 64}}
    assert torch.equal(catalogue.popularity, small.training_data.positives.item_counts)


def test_a_process_the_trainer_places_elsewhere_than_its_launcher_is_refused(small):
    """`trainer=ddp trainer.devices=2` without torchrun: the process read rank 0 of 1, the trainer says 2."""
    (prepared,) = shares_of(small, 1)
    prepared.trainer = SimpleNamespace(global_rank=1, world_size=2)
    with pytest.raises(ConfigError) as refused:
        prepared.setup("fit")
    assert str(refused.value) == (
        "data=prepared reads one share per process, but this process was started as rank 0 of 1 and trains as rank 1 of 2: "
        "launch with torchrun --nproc-per-node 2 ... or srun (README, Beyond one machine)"
    )


def test_shares_too_uneven_for_the_common_step_count_are_refused(small):
    with pytest.raises(DataError, match=r"rank \d of 3 holds \d+ training pairs, fewer than the \d+ steps"):
        shares_of(small, 3, batch_size=3)


def test_a_global_batch_too_small_for_uneven_shares_is_refused_naming_the_batch_that_works(small):
    """data.batch_size=1 on 3 processes was refused with only 'run fewer processes, or prepare again', where
    the usual cause is a per-rank batch so small that the largest share needs more steps than the smallest has pairs."""
    with pytest.raises(DataError) as caught:
        shares_of(small, 3, batch_size=1)
    suggested = int(str(caught.value).split("set data.batch_size >= ")[1].split(",")[0])
    assert "\n" not in str(caught.value) and suggested % 3 == 0
    assert all(rank.steps_per_epoch for rank in shares_of(small, 3, batch_size=suggested))  # the batch named works
    with pytest.raises(DataError):
        shares_of(small, 3, batch_size=suggested - 3)  # and is the smallest that does


def test_side_features_are_refused_with_prepared_data():
    cfg = training_config("data=prepared", "data.path=/prepared", "model.features=true")
    with pytest.raises(ConfigError, match=r"^model.features=true: data=prepared holds no side features"):
        check_prepared_data(cfg)
    check_prepared_data(training_config("data=prepared", "data.path=/prepared"))


@pytest.mark.slow
def test_two_gloo_ranks_step_together_and_validate_as_one_process(tmp_path):
    """torchrun, one thread per rank: each rank sees its own pairs once an epoch, both run the same steps, and
    val NDCG@10 after two epochs with the global batch fixed is that of one process, up to the different order."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    records = {}
    for world in (1, 2):
        out = tmp_path / f"w{world}"
        out.mkdir()
        command = [*torchrun(world), str(ROOT / "tests" / "prepared_ranks.py"), str(out)]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        records[world] = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(world)]
    (single,), ranks = records[1], records[2]
    assert ranks[0]["steps"] == ranks[1]["steps"] == single["steps"]
    assert [record["batch"] for record in ranks] == [single["batch"] // 2] * 2
    for epoch in (0, 1):
        assert sorted(map(tuple, ranks[0]["epochs"][epoch] + ranks[1]["epochs"][epoch])) == sorted(map(tuple, single["epochs"][epoch]))
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    assert abs(ranks[0]["metrics"]["val/ndcg@10"] - single["metrics"]["val/ndcg@10"]) < 0.01
    # the closing note's popularity figure counts every rank's validation users, not rank 0's alone
    assert ranks[0]["popularity"] == ranks[1]["popularity"]
    assert ranks[0]["popularity"]["val/ndcg@10"] == pytest.approx(single["popularity"]["val/ndcg@10"], abs=1e-6)


def test_val_users_keeps_one_user_on_a_rank_its_share_of_n_would_leave_empty():
    kept = sampled_validation_users(np.arange(1000, 1005), 1, 1_000_000, seed=0)
    assert kept.sum() == 1


def test_a_share_without_validation_users_is_refused_naming_the_rank(small):
    source = MemoryShares(small)
    low, high = source.blocks(2)[1:]
    source.parts[(source.users >= low) & (source.users < high) & (source.parts == VALID)] = TEST
    prepared = PreparedDataModule.from_source(source)
    with pytest.raises(DataError, match=rf"rank 1 of 2 \(users {low}..{high - 1}\) holds no validation interaction"):
        prepared.read_share(1, 2)


def test_training_on_one_rank_of_prepared_data_gives_the_single_process_run(tmp_path):
    """Through `train` on a real prepared folder: callbacks, the best checkpoint (with its full catalogue) tested, metrics.json."""
    common = ["debug=quick", "~logger", "trainer.accelerator=cpu", "callbacks.progress_bar.refresh_rate=0", "projector.max_items=0"]
    single = instantiate(training_config(*SMALL_DATA).data)
    single.setup("fit")
    write_prepared(single, tmp_path / "prepared_data", parts=2)
    expected = train(training_config(*SMALL_DATA, *common, run_dir=tmp_path / "single"))
    data = ["data=prepared", f"data.path={tmp_path / 'prepared_data'}", "data.batch_size=512"]
    prepared = train(training_config(*data, *common, run_dir=tmp_path / "prepared"))
    ignored = {"train_seconds", "data_source"}
    assert {name: value for name, value in prepared.items() if name not in ignored} == {
        name: value for name, value in expected.items() if name not in ignored
    }
    assert "test/ndcg@10" in prepared and json.loads((tmp_path / "prepared" / "metrics.json").read_text())["epochs"] == 1


def test_processes_lightning_would_spawn_itself_are_refused_before_any_data_is_read(monkeypatch):
    for variable in ("TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(variable, raising=False)
    cfg = training_config("data=prepared", "data.path=/prepared", "trainer=ddp", "trainer.devices=2")
    with pytest.raises(ConfigError) as refused:
        check_prepared_data(cfg)
    assert str(refused.value) == (
        "data=prepared reads one share per process, and 2 processes were asked for (trainer.devices, trainer.num_nodes) "
        "without a launcher: launch with torchrun --nproc-per-node 2 ... or srun (README, Beyond one machine)"
    )


@pytest.mark.slow
def test_two_ranks_launched_by_torchrun_train_test_record_a_reference_and_serve_from_one_process(tmp_path):
    """The training entry point on two gloo ranks of a real prepared folder: metrics.json, each rank's share
    logged, checkpoints naming the prepared data instead of holding a catalogue; then `evaluate` and
    `recommend`, in one process, rebuild the catalogue from the folder the checkpoint names."""
    single = instantiate(training_config(*SMALL_DATA).data)
    single.setup("fit")
    folder = tmp_path / "prepared_data"
    write_prepared(single, folder, parts=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    run_dir = tmp_path / "run"
    overrides = ["data=prepared", f"data.path={folder}", "data.batch_size=512", "trainer=ddp", "trainer.accelerator=cpu"]
    overrides += [
        "trainer.devices=2",
        "trainer.max_epochs=2",
        "~logger",
        "callbacks.progress_bar.refresh_rate=0",
        "projector.max_items=0",
        f"hydra.run.dir={run_dir}",
    ]
    command = [*torchrun(2), "-m", "recsys_lightning.train", *overrides]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and 0 < metrics["test/ndcg@10"] < 1
    shares = [line.split("] - ", 1)[1] for line in (run_dir / "train.log").read_text().splitlines() if "] - rank " in line]
    assert sorted(line.split(":")[0] for line in shares) == ["rank 0 of 2", "rank 1 of 2"]
    assert all(line.endswith("global batch 512, per-rank batch 256") for line in shares)
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["catalogue"] == {"version": 1, "prepared": PreparedFolder.open(folder).reference()}

    evaluated = run_module("recsys_lightning.evaluate", f"run_dir={run_dir}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"{metrics['test/ndcg@10']:.4f}" in evaluated.stdout  # the two ranks' test, ranked again in one process
    user = single.interactions.user_ids[0]
    served = run_module("recsys_lightning.recommend", f"run_dir={run_dir}", f"user_id={user}", "k=5")
    assert served.returncode == 0, served.stderr[-3000:]
    assert served.stdout.count("\n") >= 5


def test_on_several_torchrun_ranks_what_needs_every_user_is_refused(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launched_rank() == (1, 4)
    prepared = ["data=prepared", "data.path=/prepared", "trainer=ddp", "trainer.devices=4"]
    with pytest.raises(ConfigError, match=r"^sampler=retrieved with data=prepared on 4 processes"):
        check_prepared_data(training_config(*prepared, "sampler=retrieved", "sampler.run_dir=/run"))
    with pytest.raises(ConfigError, match=r"^pretrained_from with data=prepared on 4 processes"):
        check_prepared_data(training_config(*prepared, "pretrained_from=[/run]"))
    check_prepared_data(training_config(*prepared))


def test_a_resume_on_several_ranks_compares_the_prepared_data_by_its_manifest(small):
    data = shares_of(small, 2)[0].training_data
    recorded = CatalogueReference.from_source(MemoryShares(small))
    assert same_training_data(recorded, data)
    other = CatalogueReference(recorded.item_ids, recorded.popularity, None, {"path": "/memory", "manifest_sha256": "1" * 64})
    assert not same_training_data(other, data)
    assert not same_training_data(small.training_data.catalogue, data)
    assert not same_training_data(recorded, small.training_data)


def test_prepared_data_without_a_path_is_refused_in_one_line():
    """`train data=prepared` without data.path ended in omegaconf's MissingMandatoryValue traceback."""
    with pytest.raises(ConfigError, match=r"^data.path is not set: give it a value, data.path=<value>$"):
        check_training_config(training_config("data=prepared"))


@pytest.mark.parametrize(
    ("override", "message"), [("data.path=[1,2]", "data.path=[1,2]: must be a non-empty string"), ("data.seed=-1", "data.seed=-1: must be")]
)
def test_prepared_settings_of_the_wrong_kind_are_refused_in_one_line(override, message):
    """data.path=[1,2] ended in a TypeError traceback; data.seed=-1 trained, where the top-level seed=-1 is refused."""
    with pytest.raises(ConfigError, match=rf"^{re.escape(message)}"):
        check_training_config(training_config("data=prepared", "data.path=/p", override))


def test_training_on_a_data_option_that_refuses_its_settings_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"^set either data.path"):
        train(training_config("data=csv", run_dir=tmp_path))
