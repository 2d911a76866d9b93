"""trainer=sharded: TorchRec tables sharded row-wise over gloo ranks, against one process."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from recsys_lightning.build import build_module
from recsys_lightning.errors import ConfigError
from recsys_lightning.module import RecommenderModule
from recsys_lightning.runs.checkpoint_file import load_checkpoint, with_held_tables
from recsys_lightning.runs.other_runs import PRETRAINED_KEY, best_checkpoint_of, warm_start_weights
from recsys_lightning.runs.safe_config import checked_module_hyper_parameters
from recsys_lightning.runs.trained_run import load_trained
from recsys_lightning.samplers import PopularitySampler, UniformSampler
from recsys_lightning.sharded import SAVE_KEY, STRATEGY, folders_of, save_id_of, table_optimizer_folder, tables_folder
from recsys_lightning.sharded.checkpoint import save_sharded
from recsys_lightning.sharded.strategy import check_shardable, fused_optimizer

from helpers import (
    ROOT,
    FrameDataModule,
    compose_config,
    module_config,
    planted_data,
    quiet_trainer,
    random_interactions,
    run_module,
    torchrun,
)

# Every check tests/sharded_ranks.py runs at each world size, all of one size in one launch (ranks_of).
CHECKS = {
    1: ["lookup", "plain", "losses", "losses_hybrid", "losses_ncf", "losses_features"],
    2: [
        "lookup",
        "losses",
        "prepared",
        "ranking",
        "ranking_replicated",
        "bce",
        "bce_replicated",
        "few_items",
        "few_items_replicated",
        "losses_hybrid",
        "losses_ncf",
        "checkpoint_hybrid",
        "checkpoint_ncf",
        "feature_lookup",
        "losses_features",
        "checkpoint_mf_features",
        "checkpoint_hybrid_features",
    ],
    4: ["lookup"],
}


@pytest.fixture(scope="module")
def ranks_of(tmp_path_factory) -> Callable[[str, int], list[dict]]:
    """What each rank of a check wrote: `ranks_of(check, world)`. The first call at a world size runs all of
    that size's CHECKS in one torchrun launch of tests/sharded_ranks.py (one thread per rank); the tests of
    this module then read the records, so seven checks at W=2 cost one start-up instead of seven."""
    launched: dict[int, Path] = {}

    def ranks(check: str, world: int) -> list[dict]:
        if world not in launched:
            launched[world] = tmp_path_factory.mktemp(f"world{world}")
            _launch(CHECKS[world], world, launched[world])
        return [json.loads((launched[world] / check / f"rank{rank}.json").read_text()) for rank in range(world)]

    return ranks


def _launch(checks: list[str], world: int, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    script = str(ROOT / "tests" / "sharded_ranks.py")
    command = [*torchrun(world), script, ",".join(checks), str(out)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2, 4])
def test_sharded_lookups_equal_one_plain_table_with_ceil_rows_per_rank(ranks_of, world):
    """10 rows over W ranks: rank r holds rows [r * B, (r + 1) * B) with B = ceil(10 / W) (TorchRec's
    row-wise layout, which the evaluation slice relies on), and every rank's gather equals the plain table's.
    A rank with no ids to look up (a padding chunk of evaluation) still takes part in the collective."""
    ranks = ranks_of("lookup", world)
    block = -(-10 // world)
    assert [(rank["first"], rank["count"]) for rank in ranks] == [(r * block, min(block, 10 - r * block)) for r in range(world)]
    assert all(rank["equal"] and rank["total"] == 10 for rank in ranks)
    assert [rank["shapes"] for rank in ranks] == [[[0, 6]] * 2 if r % 2 else [[3, 6]] * 2 for r in range(world)]


@pytest.mark.slow
def test_first_twenty_sgd_losses_at_two_ranks_equal_one_rank_and_one_plain_process(ranks_of):
    """Same global batch, negatives drawn by example (seed, epoch, user, item), table gradients averaged over
    ranks as DDP does: the global loss of each step at W=2 (users sharded row-wise, items replicated) is W=1's
    and a plain process's without TorchRec, and both tables moved."""
    (plain,) = ranks_of("plain", 1)
    (single,) = ranks_of("losses", 1)
    pair = ranks_of("losses", 2)
    assert len(single["losses"]) == 20
    for other in (plain, pair[0], pair[1]):
        assert max(abs(a - b) for a, b in zip(single["losses"], other["losses"])) < 1e-5
    assert [rank["moved"]["user_factors"][:3] for rank in pair] == [[0, 150, 300], [150, 150, 300]]
    assert [rank["moved"]["item_factors"][:3] for rank in pair] == [[0, 200, 200]] * 2
    assert all(moved[3] > 1e-3 for rank in [single, *pair] for moved in rank["moved"].values())


@pytest.mark.slow
@pytest.mark.parametrize("model", ["hybrid", "ncf"])
def test_first_twenty_sgd_losses_of_mlp_scored_models_at_two_ranks_equal_one_rank(ranks_of, model):
    """Hybrid and NeuMF: their tables TorchRec's (users row-wise, items replicated), their MLP towers (and NeuMF's
    GMF output weights) stepped by Lightning's SGD with DDP's averaged gradients. The global loss of each step
    at W=2 is W=1's, and the dense weights end equal on both ranks and at both W, having moved."""
    (single,) = ranks_of(f"losses_{model}", 1)
    pair = ranks_of(f"losses_{model}", 2)
    assert len(single["losses"]) == 20
    for rank in pair:
        assert max(abs(a - b) for a, b in zip(single["losses"], rank["losses"])) < 1e-5
        assert rank["dense"].keys() == single["dense"].keys() and any(name.startswith("mlp.") for name in single["dense"])
        for name, values in single["dense"].items():
            assert max(abs(a - b) for a, b in zip(values, rank["dense"][name])) < 1e-5, name
    assert pair[0]["dense"] == pair[1]["dense"]
    # Every weight moved; the output layer's bias cannot: BPR's score differences cancel it.
    weights = [name for name in single["dense"] if not name.endswith(".bias")]
    assert all(rank["dense_moved"][name] > 1e-4 for rank in [single, *pair] for name in weights)
    users = [name for name in single["moved"] if name.startswith("user_")]
    assert [[rank["moved"][name][:3] for name in users] for rank in pair] == [[[0, 150, 300]] * len(users), [[150, 150, 300]] * len(users)]
    assert all(moved[3] > 1e-4 for rank in [single, *pair] for moved in rank["moved"].values())


@pytest.mark.slow
def test_a_feature_table_at_two_ranks_looks_up_and_steps_as_a_plain_feature_embedding(ranks_of):
    """A FeatureEmbedding's table (29 features, its last column the biases) row-wise over 2 ranks: it starts with
    random columns and a zero bias column, and with the plain module's rows its entities' feature means (`rows`,
    `all`) are the plain sparse product's within 1e-6, an empty lookup included; one fused SGD step of the same
    loss on both ranks leaves each rank's rows where plain SGD leaves them."""
    ranks = ranks_of("feature_lookup", 2)
    assert [(rank["first"], rank["count"], rank["total"]) for rank in ranks] == [(0, 15, 29), (15, 14, 29)]
    assert all(rank["zero_bias"] and rank["random"] for rank in ranks)
    assert all(max(rank["differences"]) < 1e-6 and rank["step"] < 1e-6 and rank["moved"] > 0.1 for rank in ranks)
    assert [rank["empty"] for rank in ranks] == [[1, 7], [0, 7]]


@pytest.mark.slow
def test_first_twenty_sgd_losses_with_side_features_at_two_ranks_equal_one_rank(ranks_of):
    """MF with user and item features: the feature tables are TorchRec's too (277 user features row-wise, 156 item
    features replicated at row_wise_min_rows=250), looked up feature by feature and summed per entity. The global
    loss of each step at W=2 is W=1's, and the id and feature tables moved."""
    (single,) = ranks_of("losses_features", 1)
    pair = ranks_of("losses_features", 2)
    assert len(single["losses"]) == 20
    for rank in pair:
        assert max(abs(a - b) for a, b in zip(single["losses"], rank["losses"])) < 1e-5
    assert [rank["moved"]["user_features_embedding"][:3] for rank in pair] == [[0, 139, 277], [139, 138, 277]]
    assert [rank["moved"]["item_features_embedding"][:3] for rank in pair] == [[0, 156, 156]] * 2
    assert len(single["moved"]) == 4 and all(moved[3] > 1e-4 for rank in [single, *pair] for moved in rank["moved"].values())


@pytest.mark.slow
@pytest.mark.parametrize("model", ["hybrid", "ncf", "mf_features", "hybrid_features"])
def test_an_mlp_scored_checkpoint_saved_at_two_ranks_tests_the_same_in_one_process(ranks_of, model):
    """Hybrid and NeuMF (and MF and hybrid with side features, their feature tables TorchRec's) trained at W=2
    with every table row-wise, saved (the dense weights and the feature matrices in the .ckpt, each rank's rows
    beside it), and tested from that checkpoint by a fresh module at W=2 (user rows sent to the item blocks'
    ranks, the MLP run there): the metrics of one process that reads the same checkpoint whole, as evaluate
    does, within 1e-6; recommend's loader scores as that process does."""
    from sharded_ranks import ranking_data

    ranks = ranks_of(f"checkpoint_{model}", 2)
    assert all(rank["row_wise"] == [True] * len(rank["row_wise"]) for rank in ranks)
    assert len(ranks[0]["row_wise"]) == {"hybrid": 2, "ncf": 4, "mf_features": 6, "hybrid_features": 4}[model]  # every table held
    path = Path(ranks[0]["checkpoint"])
    state = load_checkpoint(path)
    hyper_parameters = checked_module_hyper_parameters(state["hyper_parameters"], str(path))
    with_held_tables(state, path, hyper_parameters)
    datamodule = ranking_data(features=model.endswith("_features"))
    module = RecommenderModule(**hyper_parameters, data=datamodule.training_data)
    module.load_state_dict(state["state_dict"])
    (tested,) = quiet_trainer().test(module, datamodule=datamodule, verbose=False)
    assert "test/coverage@10" in tested and tested["test/hit_rate@10"] > 0
    for rank in ranks:
        assert rank["test"].keys() == tested.keys()
        assert all(abs(rank["test"][name] - value) < 1e-6 for name, value in tested.items()), (rank["test"], tested)
    served = load_trained(path).model
    users = torch.arange(5)
    assert torch.allclose(served.score_all(users), module.model.score_all(users))


def test_full_softmax_over_the_sharded_item_table_is_refused_in_one_line():
    module = build_module(module_config(loss={"_target_": "recsys_lightning.losses.FullSoftmaxLoss"}), planted_data())
    with pytest.raises(ConfigError) as refused:
        check_shardable(module)
    assert str(refused.value) == (
        "loss=full_softmax scores the whole item table every step, which trainer=sharded splits; use loss=softmax sampler=shared_pool"
    )


def test_a_model_other_than_mf_hybrid_or_ncf_is_refused_naming_what_trains_it():
    ease = {"_target_": "recsys_lightning.models.EASE"}
    with pytest.raises(ConfigError, match="^trainer=sharded trains model=mf, hybrid or ncf; train EASE with trainer=ddp optimizer=sparse"):
        check_shardable(build_module(module_config(model=ease), planted_data()))


@pytest.mark.parametrize("model", ["MatrixFactorization", "HybridMF", "NeuMF"])
def test_row_wise_adagrad_steps_the_dense_layers_with_adagrad_and_mf_keeps_it(model):
    """trainer=sharded's default, row-wise Adagrad, keeps one accumulator per row of a matrix and has no step
    for a bias vector (torchrec's fails inside the step): hybrid's and ncf's dense layers take Adagrad's step
    with the same arguments, so `trainer=sharded model=ncf` trains as it is; MF (tables only) keeps it."""
    module = build_module(module_config(model={"_target_": f"recsys_lightning.models.{model}"}), planted_data())
    module.hparams.optimizer = {"_target_": "torchrec.optim.RowWiseAdagrad", "_partial_": True, "lr": 0.1, "eps": 1e-8}
    check_shardable(module)
    optimizer = module.configure_optimizers()
    expected = "RowWiseAdagrad" if model == "MatrixFactorization" else "Adagrad"
    assert type(optimizer).__name__ == expected
    assert optimizer.defaults["lr"] == 0.1 and optimizer.defaults["eps"] == 1e-8
    if model != "MatrixFactorization":
        optimizer.zero_grad()
        sum(parameter.sum() for parameter in module.parameters()).backward()
        optimizer.step()  # every parameter, bias vectors included, takes a step


def test_a_sharded_model_with_side_features_holds_its_feature_matrices_whole_and_leaves_its_tables_on_meta():
    """trainer=sharded model.features=true is built (no longer refused): the id and feature tables stay on the meta
    device for TorchRec, while the feature matrices, data set from the datamodule, are real on every rank and not
    taken for catalogue-sized dense parts."""
    from sharded_ranks import FeaturedSynthetic

    datamodule = FeaturedSynthetic(num_users=30, num_items=20, num_interactions=300, batch_size=16)
    datamodule.setup("fit")
    sharded = {"trainer": {"strategy": {"_target_": STRATEGY}, "accelerator": "cpu"}}
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    for model in ({"_target_": "recsys_lightning.models.MatrixFactorization", "dim": 8, "features": True},
                  {"_target_": "recsys_lightning.models.HybridMF", "dim": 8, "hidden": [8], "features": True}):  # fmt: skip
        built = build_module(OmegaConf.merge(module_config(optimizer=sgd, model=model), sharded), datamodule.training_data).model
        assert all(table.is_meta for table in built.shardable_tables()) and len(built.shardable_tables()) > len(built.row_tables())
        for side in (built.user_features, built.item_features):
            assert not side.features.is_meta and side.features._nnz() > 0 and not side.trained.is_meta and side.trained.sum() > 0


@pytest.mark.parametrize(
    ("optimizer", "message"),
    [
        (
            {"_target_": "torch.optim.Adam", "lr": 0.1},
            "torch.optim.Adam has no fused table update on cpu (FBGEMM); use optimizer=sparse_adagrad",
        ),
        ({"_target_": "torch.optim.SparseAdam", "lr": 0.1}, "trainer=sharded updates tables with optimizer=sgd, sparse_adagrad"),
        (
            {"_target_": "torch.optim.Adagrad", "lr": 0.1, "initial_accumulator_value": 0.1},
            "no optimizer.initial_accumulator_value; set it to 0",
        ),
    ],
)
def test_optimizers_fbgemm_cannot_fuse_are_refused(optimizer, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        fused_optimizer(optimizer, torch.device("cpu"))


def test_fused_optimizer_arguments_are_fbgemm_names():
    adagrad = {"_target_": "torch.optim.Adagrad", "_partial_": True, "lr": 0.05, "initial_accumulator_value": 0.0, "eps": 1e-8}
    assert fused_optimizer(adagrad, torch.device("cpu")) == (torch.optim.Adagrad, {"lr": 0.05, "eps": 1e-8})
    adam = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 3e-3, "betas": [0.9, 0.99], "fused": True}
    assert fused_optimizer(adam, torch.device("cuda")) == (torch.optim.Adam, {"lr": 3e-3, "beta1": 0.9, "beta2": 0.99})


@pytest.mark.parametrize("kind", [UniformSampler, PopularitySampler])
def test_keyed_negatives_depend_on_the_example_not_on_what_was_drawn_before(kind):
    """Drawn by (seed, user, positive item), an example's negatives are the same in any batch it lands in."""
    sampler = kind(num_negatives=3)
    sampler.bind(planted_data().positives)
    sampler.reseed(7)
    sampler.by_example = True
    users, items = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3])
    together = sampler.sample(users, items, None)
    apart = torch.cat([sampler.sample(users[2:], items[2:], None), sampler.sample(users[:2], items[:2], None)])
    assert torch.equal(together, apart.roll(2, 0))
    assert not sampler.positives.contains(users, together).any()


@pytest.mark.slow
def test_prepared_shares_train_sharded_tables_on_two_ranks(ranks_of):
    """data=prepared: each rank reads its own users' pairs (global user ids) and looks their rows up wherever they live."""
    ranks = ranks_of("prepared", 2)
    assert all(len(rank["losses"]) == 20 and all(0.6 < loss < 0.8 for loss in rank["losses"]) for rank in ranks)
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert [rank["moved"]["user_factors"][:3] for rank in ranks] == [[0, 150, 300], [150, 150, 300]]
    assert all(moved[3] > 1e-3 for rank in ranks for moved in rank["moved"].values())


def test_a_sharded_run_allocates_no_table_and_is_refused_when_built():
    """The model's tables are built on the meta device (TorchRec holds each rank's rows), and a refusal comes
    when the module is built: inside the fit, Lightning's teardown hid it behind 'Cannot copy out of meta tensor'."""
    sharded = {"trainer": {"strategy": {"_target_": STRATEGY}, "accelerator": "cpu"}}
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    module = build_module(OmegaConf.merge(module_config(optimizer=sgd), sharded), planted_data())
    assert all(table.is_meta for table in module.model.row_tables())
    with pytest.raises(ConfigError, match="^torch.optim.Adam has no fused table update on cpu"):
        build_module(OmegaConf.merge(module_config(), sharded), planted_data())


def test_a_sharded_mlp_model_gets_real_dense_weights_from_the_seed_and_a_refused_model_its_one_line():
    """NeuMF's tables stay on meta for TorchRec; its MLP and GMF output weights are built for real, the same for
    the same seed whatever the catalogue. A model trainer=sharded refuses (EASE: a catalogue-sized matrix, not
    tables) is refused in one line before anything is built for it."""
    sharded = {"trainer": {"strategy": {"_target_": STRATEGY}, "accelerator": "cpu"}}
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    ncf = {"_target_": "recsys_lightning.models.NeuMF", "gmf_dim": 8, "mlp_dim": 8, "hidden": [16, 8]}
    cfg = OmegaConf.merge(module_config(optimizer=sgd, model=ncf), sharded)
    model = build_module(cfg, planted_data()).model
    assert all(table.is_meta for table in model.row_tables())
    dense = {name: value for name, value in model.named_parameters() if not value.is_meta}
    assert {"gmf_output", "mlp.user_in.weight", "mlp.tower.5.weight"} <= dense.keys()
    datamodule = FrameDataModule(random_interactions(80, 50, 12))
    datamodule.setup("fit")
    other = dict(build_module(cfg, datamodule.training_data).model.named_parameters())
    assert all(torch.equal(value, other[name]) for name, value in dense.items())
    ease = OmegaConf.merge(module_config(optimizer=sgd, model={"_target_": "recsys_lightning.models.EASE"}), sharded)
    with pytest.raises(ConfigError, match="^trainer=sharded trains model=mf, hybrid or ncf; train EASE"):
        build_module(ease, planted_data())


@pytest.mark.slow
@pytest.mark.parametrize("check", ["ranking", "ranking_replicated", "few_items", "few_items_replicated"])
def test_validation_and_test_of_held_tables_equal_one_process_ranking_the_same_weights(ranks_of, check):
    """Trainer.validate and Trainer.test of a trainer=sharded module at W=2, the item table row-wise (top-K
    merged across its blocks) or replicated, give the metrics of one plain process ranking the same tables;
    the ranks hold 2 and 1 validation chunks, so one ranks a padding chunk while the other ranks its second.
    Over 12 items, K=10 ends most users' lists in seen items at -inf: coverage and novelty leave them out, as
    one process does (counted, the row-wise path gave novelty@10 1.4237 against one process's 1.5092)."""
    from sharded_ranks import known_tables, ranking_data

    ranks = ranks_of(check, 2)
    num_items = 12 if check.startswith("few_items") else 200
    datamodule = ranking_data(num_items)
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    module = build_module(module_config(optimizer=sgd, eval={"ks": [5, 10]}), datamodule.training_data)
    with torch.no_grad():
        for name, full in known_tables(num_items).items():
            getattr(module.model, name).copy_(full)
    trainer = quiet_trainer()
    trainer.validate(module, datamodule=datamodule, verbose=False)
    validated = {name: float(value) for name, value in trainer.callback_metrics.items()}
    (tested,) = quiet_trainer().test(module, datamodule=datamodule, verbose=False)
    assert sorted(rank["chunks"] for rank in ranks) == ([1, 2] if num_items == 200 else [1, 1])
    assert [rank["row_wise"] for rank in ranks] == [check in ("ranking", "few_items")] * 2
    assert "test/coverage@10" in tested and validated["val/ndcg@10"] > 0
    for rank in ranks:
        assert rank["val"].keys() == validated.keys() and rank["test"].keys() == tested.keys()
        assert all(abs(rank["val"][name] - value) < 1e-6 for name, value in validated.items())
        assert all(abs(rank["test"][name] - value) < 1e-6 for name, value in tested.items())


@pytest.mark.parametrize(
    ("overrides", "target"),
    [
        (("trainer=sharded",), "torchrec.optim.RowWiseAdagrad"),
        (("trainer=sharded", "optimizer=sgd"), "torch.optim.SGD"),
        (("optimizer=sgd", "trainer=sharded"), "torch.optim.SGD"),
        ((), "torch.optim.Adam"),
    ],
)
def test_trainer_sharded_trains_with_rowwise_adagrad_unless_an_optimizer_is_named(overrides, target):
    """optimizer=adam, the default, has no fused CPU table update: trainer=sharded alone picks rowwise_adagrad
    (best val NDCG@10 on ML-100K at W=1 of the fused ones), and `optimizer=` on the command line still wins."""
    assert compose_config("config", *overrides).optimizer._target_ == target


SHARDED_RUN = [
    "trainer=sharded",
    "data=synthetic",
    "data.num_users=500",
    "data.num_items=300",
    "data.num_interactions=8000",
    "trainer.strategy.row_wise_min_rows=100",  # users and items row-wise
    "trainer.max_epochs=3",
    "~logger",
    "callbacks.progress_bar.refresh_rate=0",
    "projector.max_items=0",
]


def _torchrun_train(world: int, run_dir, *overrides: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    command = [*torchrun(world), "-m", "recsys_lightning.train"]
    command += [*SHARDED_RUN, f"trainer.devices={world}", f"hydra.run.dir={run_dir}", *overrides]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_trainer_sharded_alone_trains_validates_and_tests_through_torchrun_at_two_ranks_as_at_one(tmp_path):
    """The training entry point, `trainer=sharded` with no optimizer named (rowwise_adagrad), the same global
    batch of 512 at W=2 and W=1: both finish with test metrics of the best checkpoint, whose tables each rank
    wrote beside the .ckpt and read back. The metrics are close, not equal: the table gradients are summed in
    another order at W=2, Adagrad divides by their running norm, and after 3 epochs a few users' rankings
    tip (measured: val/ndcg@10 0.2788 at W=1, 0.2772 at W=2; one user of 484 is 0.002 of hit_rate)."""
    pair = _torchrun_train(2, tmp_path / "w2", "data.batch_size=256")
    single = _torchrun_train(1, tmp_path / "w1", "data.batch_size=512")
    assert pair["epochs"] == single["epochs"] == 3
    assert 0.2 < single["test/ndcg@10"] < 0.35 and 0.2 < single["val/ndcg@10"] < 0.35
    names = [name for name in single if name.startswith(("val/", "test/"))]
    assert len(names) > 20 and all(abs(pair[name] - single[name]) < 0.01 for name in names)
    checkpoints = tmp_path / "w2" / "checkpoints"
    # Each .ckpt names its save's folders, and the folders of its earlier saves (last.ckpt: three) are gone.
    last = checkpoints / "last.ckpt"
    save_id = torch.load(last, weights_only=True)[SAVE_KEY]
    current = [tables_folder(last, save_id), table_optimizer_folder(last, save_id)]
    assert sorted(folders_of(last)) == sorted(current)
    for folder in current:
        assert sorted(path.name for path in folder.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    best = checkpoints / f"epoch{pair['best_epoch']:03d}.ckpt"
    assert tables_folder(best, torch.load(best, weights_only=True)[SAVE_KEY]).is_dir()
    # One process serves the two ranks' run: the tables read whole from beside the best .ckpt.
    evaluated = run_module("recsys_lightning.evaluate", f"run_dir={tmp_path / 'w2'}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"{pair['test/ndcg@10']:.6f}" in evaluated.stdout and "all 14 metrics equal metrics.json" in evaluated.stdout
    served = run_module("recsys_lightning.recommend", f"run_dir={tmp_path / 'w2'}", "user_id=1", "k=3")
    assert served.returncode == 0 and sum(line.endswith(" model") for line in served.stdout.splitlines()) == 3, served.stderr[-3000:]
    # pretrained_from=[the two ranks' run]: a plain run starts from every table, read whole from beside the .ckpt.
    trained = load_trained(best_checkpoint_of(tmp_path / "w2", PRETRAINED_KEY))
    weights = warm_start_weights(tmp_path / "w2", trained.model, trained.catalogue)
    assert weights.keys() == trained.model.state_dict().keys()
    assert all(torch.equal(value, trained.model.state_dict()[name]) for name, value in weights.items())
    # Resumed at W=2, each rank reading back its rows and their Adagrad accumulators: the uninterrupted run's metrics.
    resumed = _torchrun_train(2, tmp_path / "w2", "data.batch_size=256", "trainer.max_epochs=4", "ckpt_path=last")
    uninterrupted = _torchrun_train(2, tmp_path / "w2-4", "data.batch_size=256", "trainer.max_epochs=4")
    assert resumed["epochs"] == uninterrupted["epochs"] == 4
    assert all(abs(resumed[name] - uninterrupted[name]) < 1e-6 for name in names), [(n, resumed[n], uninterrupted[n]) for n in names]


SAVED = "0123456789abcdef" * 2  # a save id, as new_save_id makes them


def _sharded_checkpoint(tmp_path, tables: dict[str, torch.Tensor], save_id: str = SAVED) -> tuple[dict, dict]:
    """A plain module's checkpoint with its row tables moved to `<name>.tables-<save id>` beside it, as
    trainer=sharded saves."""
    module = build_module(module_config(), planted_data())
    hyper_parameters = dict(module.hparams)
    state_dict = {name: value for name, value in module.state_dict().items() if "factors" not in name and "bias" not in name}
    save_sharded(tables, tables_folder(tmp_path / "epoch001.ckpt", save_id))
    return {"state_dict": state_dict, SAVE_KEY: save_id}, hyper_parameters


def _stored_tables(data, fill: Callable[[int, int], torch.Tensor]) -> dict[str, torch.Tensor]:
    shapes = {"user_factors": (data.num_users, 16), "item_factors": (data.num_items, 16)}
    shapes |= {"user_bias": (data.num_users, 4), "item_bias": (data.num_items, 4)}
    return {f"{name}.embeddings.{name}.weight": fill(rows, dim) for name, (rows, dim) in shapes.items()}


def test_a_checkpoint_reads_the_tables_of_its_own_save_not_newer_ones_a_crash_left_beside_it(tmp_path):
    """A save writes new folders, then the .ckpt naming them: a crash between leaves the previous .ckpt
    beside the new folders, and that .ckpt must read its own (the old name-only scheme read the new ones)."""
    data = planted_data()
    checkpoint, hyper_parameters = _sharded_checkpoint(tmp_path, _stored_tables(data, torch.zeros))
    save_sharded(_stored_tables(data, torch.ones), tables_folder(tmp_path / "epoch001.ckpt", "f" * 32))  # the crashed save's
    with_held_tables(checkpoint, tmp_path / "epoch001.ckpt", hyper_parameters)
    assert not checkpoint["state_dict"]["model.user_factors"].any()
    assert len(folders_of(tmp_path / "epoch001.ckpt")) == 2


@pytest.mark.parametrize("save_id", ["../../etc", "F" * 32, "0" * 31, 7, ["0" * 32]])
def test_a_save_id_that_is_not_one_this_project_writes_is_refused_in_one_line(tmp_path, save_id):
    """The .ckpt is untrusted and its save id names a folder: only 32 lowercase hex digits, so that it can
    only name a sibling of the .ckpt."""
    with pytest.raises(ConfigError, match=r"epoch001\.ckpt: refused, its sharded_save is not a save id") as refused:
        save_id_of({SAVE_KEY: save_id}, tmp_path / "epoch001.ckpt")
    assert "\n" not in str(refused.value)
    assert save_id_of({}, tmp_path / "epoch001.ckpt") is None and save_id_of({SAVE_KEY: SAVED}, tmp_path / "x.ckpt") == SAVED


def test_the_folders_of_a_checkpoint_are_its_own_saves_only(tmp_path):
    for name in ("epoch001.tables", f"epoch001.tables-{SAVED}", f"epoch001.table_optimizer-{'a' * 32}", "epoch0010.tables",
                 f"epoch0010.tables-{SAVED}", "epoch001.tables-x", f"epoch001.tables-{SAVED}x", "epoch001.ckpt"):  # fmt: skip
        (tmp_path / name).mkdir()
    found = sorted(path.name for path in folders_of(tmp_path / "epoch001.ckpt"))
    assert found == ["epoch001.table_optimizer-" + "a" * 32, "epoch001.tables", f"epoch001.tables-{SAVED}"]


def test_a_sharded_checkpoint_is_read_whole_in_one_process_bounded_by_the_recorded_model(tmp_path):
    data = planted_data()
    shapes = {"user_factors": (data.num_users, 16), "item_factors": (data.num_items, 16), "user_bias": (data.num_users, 1)}
    shapes["item_bias"] = (data.num_items, 1)
    stored = {name: torch.randn(rows, -(-dim // 4) * 4) for name, (rows, dim) in shapes.items()}
    checkpoint, hyper_parameters = _sharded_checkpoint(
        tmp_path, {f"{name}.embeddings.{name}.weight": value for name, value in stored.items()}
    )
    with_held_tables(checkpoint, tmp_path / "epoch001.ckpt", hyper_parameters)
    for name, (_, dim) in shapes.items():
        assert torch.equal(checkpoint["state_dict"][f"model.{name}"], stored[name][:, :dim])
    with pytest.raises(ConfigError, match=rf"epoch001.ckpt: holds model.user_factors, which epoch001.tables-{SAVED} beside it holds too"):
        with_held_tables(checkpoint, tmp_path / "epoch001.ckpt", hyper_parameters)


def test_a_sharded_checkpoint_larger_than_its_recorded_model_is_refused(tmp_path):
    data = planted_data()
    shapes = {"user_factors": (data.num_users + 1, 16), "item_factors": (data.num_items, 16), "user_bias": (data.num_users, 4)}
    shapes["item_bias"] = (data.num_items, 4)
    checkpoint, hyper_parameters = _sharded_checkpoint(
        tmp_path, {f"{name}.embeddings.{name}.weight": torch.zeros(shape) for name, shape in shapes.items()}
    )
    with pytest.raises(ConfigError) as refused:
        with_held_tables(checkpoint, tmp_path / "epoch001.ckpt", hyper_parameters)
    assert "epoch001.tables" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.slow
def test_bce_and_auc_over_a_row_wise_item_table_equal_those_over_a_replicated_one(ranks_of):
    """loss=bce's val/bce and val/auc judge each held-out item against one drawn from the chunk's seed: over a
    row-wise item table only those pairs are looked up (no chunk's scores against every item), and give what
    the replicated table's scores give at the same W (the draws depend on the rank's chunks, not on one process's)."""
    row_wise = ranks_of("bce", 2)
    replicated = ranks_of("bce_replicated", 2)
    assert [rank["row_wise"] for rank in row_wise + replicated] == [True, True, False, False]
    for split in ("val", "test"):
        expected = replicated[0][split]
        assert {f"{split}/bce", f"{split}/auc"} <= expected.keys() and 0.3 < expected[f"{split}/auc"] < 0.9
        for rank in row_wise:
            assert rank[split].keys() == expected.keys()
            assert all(abs(rank[split][name] - value) < 1e-6 for name, value in expected.items()), (rank[split], expected)


def test_a_table_folder_or_shard_file_that_is_a_symbolic_link_is_refused_in_one_line(tmp_path):
    """The save id makes the folder a sibling of the .ckpt; a link there (or to a shard file) would read
    tables from anywhere, unsaid: another run's of the same shape, or a file outside every run."""
    data = planted_data()
    checkpoint, hyper_parameters = _sharded_checkpoint(tmp_path / "elsewhere", _stored_tables(data, torch.zeros))
    (tmp_path / "run").mkdir()
    tables_folder(tmp_path / "run" / "epoch001.ckpt", SAVED).symlink_to(tables_folder(tmp_path / "elsewhere" / "epoch001.ckpt", SAVED))
    with pytest.raises(ConfigError, match=rf"epoch001.tables-{SAVED}: a symbolic link") as refused:
        with_held_tables(checkpoint, tmp_path / "run" / "epoch001.ckpt", hyper_parameters)
    assert "\n" not in str(refused.value)
    linked = tables_folder(tmp_path / "elsewhere" / "epoch001.ckpt", SAVED)
    shard = next(linked.glob("*.distcp"))
    shard.rename(tmp_path / "moved.distcp")
    shard.symlink_to(tmp_path / "moved.distcp")
    with pytest.raises(ConfigError, match=rf"{shard.name}: a symbolic link"):
        with_held_tables(checkpoint, tmp_path / "elsewhere" / "epoch001.ckpt", hyper_parameters)
