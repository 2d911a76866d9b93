"""Config values and arguments are checked once, up front, with one line naming the key and the range."""

from __future__ import annotations

import importlib.machinery
import itertools
import sys
import types

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from recsys_lightning.build import build_module
from recsys_lightning.errors import ConfigError
from recsys_lightning.evaluate import check_evaluate_config
from recsys_lightning.recommend import serve
from recsys_lightning.serving.arguments import check_serving_config
from recsys_lightning.validation import TRAINING_RULES, check_training_config, logged_metrics

from helpers import (
    FrameDataModule,
    all_options,
    compose_config,
    option_config,
    options,
    quiet_trainer,
    recommender_options,
    run_module,
    training_config,
)


def refused(check, cfg) -> str:
    with pytest.raises(ConfigError) as caught:
        check(cfg)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400
    return message


def accepted(check, cfg) -> bool:
    """True when `check` takes `cfg`; a refusal fails the test with its one line, not a traceback."""
    try:
        check(cfg)
    except ConfigError as error:
        pytest.fail(f"refused: {error}")
    return True


def pretend_cuda_devices(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.fixture
def no_cuda(monkeypatch):
    pretend_cuda_devices(monkeypatch, 0)


@pytest.fixture
def one_cuda_device(monkeypatch):
    pretend_cuda_devices(monkeypatch, 1)


# --- every configuration that works today passes ---------------------------------------------------


@pytest.mark.parametrize(("group", "option"), all_options())
def test_every_config_option_passes(group, option, monkeypatch, tmp_path):
    pretend_cuda_devices(monkeypatch, 2)  # trainer=gpu needs one, trainer=ddp two
    # the one preset that starts from other runs names placeholders for them (tested below), data=prepared a folder
    if option == "ml100k_ncf_pretrained":
        cfg = training_config(f"{group}={option}", f"pretrained_from=[{tmp_path},{tmp_path}]")
    elif option in ("linear_reranker", "ml100k_reranker"):  # a re-ranker: its preset, with its two runs
        cfg = training_config("experiment=ml100k_reranker", f"retrieval.run_dir={tmp_path}", f"rerank.fold_run_dir={tmp_path}")
    elif option == "prepared":  # the one data option without a default source: its folder is required
        cfg = training_config(f"{group}={option}", f"data.path={tmp_path}")
    else:
        cfg = option_config(group, option)
    assert accepted(check_training_config, cfg)
    # ...and the check is live on it: a key the option's class does not take is still refused
    checked = group if group in ("data", "model", "loss", "sampler", "optimizer", "trainer") else "model"
    with open_dict(cfg):
        cfg[checked].no_such_setting = 1
    assert refused(check_training_config, cfg).startswith(f"{checked}.no_such_setting: ")


def test_a_preset_that_needs_runs_says_so_before_data_is_loaded():
    message = refused(check_training_config, training_config("experiment=ml100k_ncf_pretrained"))
    assert message.startswith("pretrained_from: <gmf run> is not a folder; list the training runs to start from")


def loss_sampler_pairs() -> list[tuple[str, str, str]]:
    """Every (loss, sampler) pair, the only two keys check_loss_and_sampler reads; the models take turns
    (a Latin square: each model with several losses and samplers), since no check reads the model with them."""
    # A re-ranker is not trained with a loss or sampler (it is refused alone: test_reranker.py).
    models, losses, samplers = recommender_options(), options("loss"), options("sampler")
    return [
        (models[(i + j) % len(models)], loss, sampler)
        for (i, loss), (j, sampler) in itertools.product(enumerate(losses), enumerate(samplers))
    ]


@pytest.mark.parametrize(("model", "loss", "sampler"), loss_sampler_pairs())
def test_every_model_loss_sampler_combination_passes_unless_the_loss_rejects_the_sampler(model, loss, sampler):
    cfg = training_config(f"model={model}", f"loss={loss}", f"sampler={sampler}")
    rejected = (loss, sampler) in {
        ("bce", "in_batch"),
        ("mse", "popularity"),
        ("mse", "in_batch"),
        ("mse", "hard"),
        ("mse", "shared_pool"),
        ("mse", "retrieved"),
    }
    if rejected:
        assert "cannot train with" in refused(check_training_config, cfg)
    else:
        assert accepted(check_training_config, cfg)


def test_every_rule_names_a_key_some_config_has():
    keys = set()
    for group, option in all_options():
        plain = OmegaConf.to_container(option_config(group, option), resolve=False)
        keys |= set(_flat_keys(plain))
    assert set(TRAINING_RULES) - keys == set()  # the classes' own keys are declared on them: test_ranges.py


def _flat_keys(node, prefix=""):
    for key, value in node.items():
        yield prefix + key
        if isinstance(value, dict):
            yield from _flat_keys(value, f"{prefix}{key}.")


# --- one bad value, one line naming the key and what is accepted -------------------------------------

BAD_VALUES = [
    (["model.dim=0"], "model.dim=0: must be an integer in [1, 65536]"),
    (["model.dim=-8"], "model.dim=-8: must be an integer in [1, 65536]"),
    (["model.dim=12.5"], "model.dim=12.5: must be an integer in [1, 65536]"),
    (["model.dim=100000"], "model.dim=100000: must be an integer in [1, 65536]"),
    (["data=synthetic", "data.num_users=100000000000"], "data.num_users=100000000000: must be an integer in [1, 2147483647]"),
    (["model=ncf", "model.gmf_dim=0"], "model.gmf_dim=0: must be an integer in [1, 65536]"),
    (["model=ncf", "model.mlp_dim=abc"], "model.mlp_dim=abc: must be an integer in [1, 65536]"),
    (["model=hybrid", "model.hidden=[64,0]"], "model.hidden=[64,0]: must be a non-empty list, each entry an integer in [1, 65536]"),
    (["model=ncf", "model.hidden=[]"], "model.hidden=[]: must be a non-empty list"),
    (["model=hybrid", "model.dropout=1.0"], "model.dropout=1.0: must be a number in [0, 1)"),
    (["model=ncf", "model.dropout=-0.1"], "model.dropout=-0.1: must be a number in [0, 1)"),
    (["model.init_std=0"], "model.init_std=0: must be a number > 0"),
    (["data.batch_size=0"], "data.batch_size=0: must be auto or an integer >= 1"),
    (["data.batch_size=-5"], "data.batch_size=-5: must be auto or an integer >= 1"),
    (["data.batch_size=12.5"], "data.batch_size=12.5: must be auto or an integer >= 1"),
    (["data.batch_size=abc"], "data.batch_size=abc: must be auto or an integer >= 1"),
    (["data.batch_size=true"], "data.batch_size=true: must be auto or an integer >= 1"),
    (["data.eval_chunk_size=0"], "data.eval_chunk_size=0: must be an integer >= 1"),
    (["data.eval_chunk_size=1.5"], "data.eval_chunk_size=1.5: must be an integer >= 1"),
    (["eval.ks=[]"], "eval.ks=[]: must be a non-empty list, each entry an integer >= 1, e.g. [10,20]"),
    (["eval.ks=[0,10]"], "eval.ks=[0,10]: must be a non-empty list"),
    (["eval.ks=[-5,10]"], "eval.ks=[-5,10]: must be a non-empty list"),
    (["eval.ks=[10,2.5]"], "eval.ks=[10,2.5]: must be a non-empty list"),
    (["eval.ks=10"], "eval.ks=10: must be a non-empty list"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1: must be a number > 0"),
    (["optimizer.lr=0"], "optimizer.lr=0: must be a number > 0"),
    (["optimizer.lr=abc"], "optimizer.lr=abc: must be a number > 0"),
    (["optimizer.lr=nan"], "optimizer.lr=nan: must be a number > 0"),
    (["seed=-1"], "seed=-1: must be an integer in [0, 4294967295]"),
    (["seed=4294967296"], "seed=4294967296: must be an integer in [0, 4294967295]"),
    (["seed=1.5"], "seed=1.5: must be an integer in [0, 4294967295]"),
    (["sampler.num_negatives=0"], "sampler.num_negatives=0: must be an integer >= 1"),
    (["sampler=hard", "sampler.candidates=0"], "sampler.candidates=0: must be an integer >= 1"),
    (["sampler=popularity", "sampler.alpha=nan"], "sampler.alpha=nan: must be a number >= 0"),
    (["sampler=popularity", "sampler.alpha=inf"], "sampler.alpha=inf: must be a number >= 0"),
    (["sampler=popularity", "sampler.alpha=-0.5"], "sampler.alpha=-0.5: must be a number >= 0"),
    (["data.split_ratios=[a,b,c]"], "data.split_ratios=[a,b,c]: must be three positive numbers (train, valid, test) summing to 1"),
    (["data.split_ratios=[0.8,0.2]"], "data.split_ratios=[0.8,0.2]: must be three positive numbers"),
    (["data.split_ratios=[0.5,0.1,0.1]"], "data.split_ratios=[0.5,0.1,0.1]: must be three positive numbers"),
    (["data.split_ratios=[1.2,-0.1,-0.1]"], "data.split_ratios=[1.2,-0.1,-0.1]: must be three positive numbers"),
    (["data.split=random"], "data.split=random: must be one of ratio, leave_one_out, temporal"),
    (["data=csv", "data.encoding=utf-42"], "data.encoding=utf-42: must be a text encoding Python knows"),
    (["data=csv", "data.on_overlap=keep"], "data.on_overlap=keep: must be one of drop, error"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0: must be an integer >= 1"),
    (["trainer.max_epochs=-1"], "trainer.max_epochs=-1: must be an integer >= 1"),
    (["trainer.devices=0"], "trainer.devices=0: must be an integer >= 1 or one of -1, auto"),
    (["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0: must be an integer >= 1 or a number in (0, 1]"),
    (["trainer.accelerator=tpu9"], "trainer.accelerator=tpu9: must be one of auto, cpu, gpu"),
    (["loss=softmax", "loss.temperature=0"], "loss.temperature=0: must be a number > 0"),
    (["loss=full_softmax", "loss.temperature=-1"], "loss.temperature=-1: must be a number > 0"),
    (["loss.l2=-0.01"], "loss.l2=-0.01: must be a number >= 0"),
    (["callbacks.early_stopping.patience=-1"], "callbacks.early_stopping.patience=-1: must be auto or an integer >= 0"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_VALUES, ids=[" ".join(case[0]) for case in BAD_VALUES])
def test_bad_value_is_one_line_naming_the_key_and_the_range(overrides, message):
    assert refused(check_training_config, training_config(*overrides)).startswith(message)


def test_long_bad_value_is_cut_in_the_message():
    message = refused(check_training_config, training_config("data.split=" + "x" * 5000))
    assert message.startswith("data.split=xxx") and "...: must be one of" in message and len(message) < 200


# --- monitors name metrics the run logs ----------------------------------------------------------------


def test_monitor_without_its_k_in_eval_ks_names_every_key_and_the_fix():
    message = refused(check_training_config, training_config("eval.ks=[20]"))
    assert message == (
        "monitor.metric, optimized_metric=val/ndcg@10 "
        "name no metric this run logs: eval.ks=[20] has no 10; add 10 to eval.ks or use val/ndcg@20"
    )


def test_monitor_of_a_k_not_evaluated_is_refused():
    message = refused(check_training_config, training_config("callbacks.early_stopping.monitor=val/ndcg@5"))
    assert message.startswith("callbacks.early_stopping.monitor=val/ndcg@5 names no metric this run logs: eval.ks=[10,20] has no 5")
    assert accepted(check_training_config, training_config("callbacks.early_stopping.monitor=val/ndcg@20"))


def test_misspelt_monitor_gets_the_closest_logged_name():
    message = refused(check_training_config, training_config("callbacks.model_checkpoint.monitor=val/ndgc@10"))
    assert "did you mean val/ndcg@10?" in message


@pytest.mark.parametrize(
    ("loss", "monitor", "logged"),
    [("bpr", "val/rmse", False), ("mse", "val/rmse", True), ("bpr", "val/bce", False), ("bce", "val/bce", True)],
)
def test_rating_and_pointwise_metrics_are_monitorable_only_with_their_losses(loss, monitor, logged):
    cfg = training_config(f"loss={loss}", f"callbacks.early_stopping.monitor={monitor}", "callbacks.early_stopping.mode=min")
    if logged:
        assert accepted(check_training_config, cfg)
    else:
        assert refused(check_training_config, cfg).startswith(f"callbacks.early_stopping.monitor={monitor} names no metric")


def test_lower_is_better_metric_watched_for_a_maximum_is_refused():
    cfg = training_config("loss=mse", "callbacks.early_stopping.monitor=val/rmse", "callbacks.early_stopping.mode=max")
    message = refused(check_training_config, cfg)
    assert message == (
        "callbacks.early_stopping.mode=max, but callbacks.early_stopping.monitor=val/rmse is better when lower: "
        "set callbacks.early_stopping.mode=min"
    )


def test_plateau_scheduler_monitor_and_optimized_metric_are_checked_too():
    assert refused(check_training_config, training_config("scheduler=plateau", "scheduler.monitor=val/mrr@5")).startswith(
        "scheduler.monitor="
    )
    assert refused(check_training_config, training_config("optimized_metric=test/ndcg@5")).startswith("optimized_metric=test/ndcg@5")
    assert accepted(check_training_config, training_config("optimized_metric=test/ndcg@20"))


def test_dropped_callbacks_are_not_checked():
    dropped = ("~callbacks.early_stopping", "callbacks.model_checkpoint=null")
    cfg = training_config(*dropped, "eval.ks=[10]")
    assert "early_stopping" not in cfg.callbacks and cfg.callbacks.model_checkpoint is None
    assert accepted(check_training_config, cfg)
    # the callbacks left are still checked
    message = refused(check_training_config, training_config(*dropped, "callbacks.epoch_log.monitor=val/ndcg@5"))
    assert message.startswith("callbacks.epoch_log.monitor=val/ndcg@5 names no metric this run logs")


@pytest.mark.parametrize("loss", ["bpr", "mse", "bce"])
def test_logged_metrics_are_the_names_the_module_logs(loss, small_frame, tmp_path):
    cfg = training_config(f"loss={loss}", "eval.ks=[5,10]")
    datamodule = FrameDataModule(small_frame, batch_size=256)
    datamodule.setup("fit")
    module = build_module(cfg, datamodule.training_data)
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=datamodule)
    monitorable = {name for name in trainer.callback_metrics if name.startswith("val/") or name == "train/loss"}
    assert set(logged_metrics(cfg)) == monitorable


# --- folders and devices ---------------------------------------------------------------------------------


def test_data_dir_or_run_dir_that_is_a_file_is_refused(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert refused(check_training_config, training_config(f"paths.data_dir={a_file}")) == (
        f"paths.data_dir={a_file} is a file; point it at a folder (or a path that does not exist yet)"
    )
    assert refused(check_training_config, training_config(f"paths.data_dir={a_file}/ml")) == (
        f"paths.data_dir={a_file}/ml cannot be created: {a_file} is a file; point it at a folder (or a path that does not exist yet)"
    )
    assert refused(check_training_config, training_config(run_dir=a_file)).startswith(f"paths.run_dir={a_file} is a file")
    assert accepted(check_training_config, training_config(f"paths.data_dir={tmp_path}/not/yet", run_dir=tmp_path / "new"))
    assert not (tmp_path / "not").exists() and not (tmp_path / "new").exists()  # checked, not created


def test_gpu_accelerator_without_cuda_is_refused(no_cuda):
    assert refused(check_training_config, training_config("trainer=gpu")) == (
        "trainer.accelerator=gpu: no CUDA device is visible here; use trainer.accelerator=cpu (or auto)"
    )
    assert accepted(check_training_config, training_config("trainer=ddp"))  # auto falls back to CPU processes


@pytest.mark.parametrize(
    ("accelerator", "why"),
    [
        ("mps", "Apple's MPS backend is not available here (macOS on Apple silicon only)"),
        ("tpu", "a TPU needs torch_xla, which is not installed here"),
    ],
)
def test_mps_or_tpu_that_is_not_available_is_refused_up_front(monkeypatch, accelerator, why):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "torch_xla", None)  # as if not installed: find_spec answers None
    assert refused(check_training_config, training_config(f"trainer.accelerator={accelerator}")) == (
        f"trainer.accelerator={accelerator}: {why}; use trainer.accelerator=cpu or auto"
    )


def test_mps_or_tpu_that_is_available_passes(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    torch_xla = types.ModuleType("torch_xla")
    torch_xla.__spec__ = importlib.machinery.ModuleSpec("torch_xla", None)
    monkeypatch.setitem(sys.modules, "torch_xla", torch_xla)  # as if installed
    configs = {accelerator: training_config(f"trainer.accelerator={accelerator}") for accelerator in ("mps", "tpu")}
    for cfg in configs.values():
        assert accepted(check_training_config, cfg)
    # the same configs once the backends are gone: it was their presence that let them pass
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "torch_xla", None)
    for accelerator, cfg in configs.items():
        assert refused(check_training_config, cfg).startswith(f"trainer.accelerator={accelerator}: ")


def test_more_gpus_than_exist_is_refused(one_cuda_device):
    assert refused(check_training_config, training_config("trainer=ddp")).startswith("trainer.devices=2: only 1 CUDA device(s) here")
    assert refused(check_training_config, training_config("trainer=gpu", "trainer.devices=[1]")).startswith("trainer.devices=[1]: only 1")


# --- serving and evaluate arguments ----------------------------------------------------------------------


def serving(*overrides: str):
    return compose_config("recommend", *overrides)


BAD_SERVING = [
    (["k=2.5"], "k=2.5: must be an integer >= 1"),
    (["k=abc"], "k=abc: must be an integer >= 1"),
    (["k=true"], "k=true: must be an integer >= 1"),
    (["index=annoy"], "index=annoy: must be one of model, faiss"),
    (["index=faiss", "faiss.kind=hnsw"], "faiss.kind=hnsw: must be one of flat, ivf"),
    (["index=faiss", "faiss.nprobe=0"], "faiss.nprobe=0: must be an integer >= 1"),
    (["index=faiss", "faiss.nlist=0"], "faiss.nlist=0: must be"),
    (["k=0"], "k=0: must be an integer >= 1"),
    (["chunk_size=0"], "chunk_size=0: must be an integer >= 1"),
    (["min_history=-1"], "min_history=-1: must be an integer >= 0"),
    (["exclude=train"], "exclude=train: must be a list, each entry one of train, valid, test, e.g. [train,valid]"),
    (["exclude=[train,bogus]"], "exclude=[train,bogus]: must be a list, each entry one of train, valid, test"),
    (["users=some"], "users=some: must be all or a non-empty list, each entry a single id, e.g. [1,2,3] or null"),
    (["users=[]"], "users=[]: must be all or a non-empty list"),
    (["device=gpu7"], "device=gpu7: must be cpu, cuda, cuda:<index> or auto"),
    (["user_id=[1,2]"], "user_id=[1,2]: must be a single id or null"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_SERVING, ids=[" ".join(case[0]) for case in BAD_SERVING])
def test_bad_serving_argument_is_one_line_naming_it(overrides, message):
    assert refused(check_serving_config, serving("run_dir=somewhere", "user_id=1", *overrides)).startswith(message)


def test_serving_without_run_dir_says_what_to_set():
    assert refused(check_serving_config, serving("user_id=1")).startswith("run_dir is not set: set run_dir=<a training run folder>")


def test_serving_on_cuda_needs_a_cuda_device(no_cuda):
    assert refused(check_serving_config, serving("run_dir=r", "user_id=1", "device=cuda")).startswith("device=cuda: no CUDA device")


def test_serving_on_a_cuda_index_that_does_not_exist_is_refused(one_cuda_device):
    assert refused(check_serving_config, serving("run_dir=r", "user_id=1", "device=cuda:1")) == (
        "device=cuda:1: only 1 CUDA device(s) here, cuda:0 to cuda:0"
    )


def test_output_problems_are_found_before_the_checkpoint_is_loaded(tmp_path):
    """run_dir holds no checkpoint: reaching the output error proves nothing was loaded or computed."""
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    base = (f"run_dir={empty_run}", "users=all")
    with pytest.raises(ConfigError, match=f"^output={tmp_path} is a folder; give a file path, e.g. output={tmp_path}/recs.csv$"):
        serve(serving(*base, f"output={tmp_path}"))
    with pytest.raises(ConfigError, match=f"^output={tmp_path}/missing/recs.csv: folder {tmp_path}/missing does not exist"):
        serve(serving(*base, f"output={tmp_path}/missing/recs.csv"))
    with pytest.raises(ConfigError, match="is written only in batch mode: add users=all"):
        serve(serving(f"run_dir={empty_run}", "user_id=1", f"output={tmp_path}/recs.csv"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "run_dir is not set: set run_dir=<a training run folder>"),
        (["run_dir=r", "split=train"], "split=train: must be one of test, valid"),
        (["run_dir=r", "accelerator=tpu"], "accelerator=tpu: must be one of auto, cpu, gpu, cuda"),
        (["run_dir=r", "tolerance=-1"], "tolerance=-1: must be a number >= 0"),
        (["run_dir=r", "tolerance=nan"], "tolerance=nan: must be a number >= 0"),
        (
            ["run_dir=r", "retrieval.run_dir=s", "candidates=cold"],
            "candidates=cold is not implemented with retrieval.run_dir (the two stages rank the whole catalogue): "
            "drop candidates, or evaluate each run alone with candidates=cold",
        ),
    ],
)
def test_bad_evaluate_argument_is_one_line_naming_it(overrides, message):
    assert refused(check_evaluate_config, compose_config("evaluate", *overrides)).startswith(message)


# --- through the real entry points ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.dim=0", "error: model.dim=0: must be an integer in [1, 65536]"),
        ("trainer.max_epochs=0", "error: trainer.max_epochs=0: must be an integer >= 1"),
    ],
)
def test_train_refuses_a_bad_value_before_training(override, message, tmp_path):
    run_dir = tmp_path / "run"
    result = run_module("recsys_lightning.train", override, f"hydra.run.dir={run_dir}")
    assert (result.returncode, result.stderr.strip()) == (1, message)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_train_into_a_run_dir_that_is_a_file_is_one_line(tmp_path):
    a_file = tmp_path / "hostname"
    a_file.write_text("x")
    result = run_module("recsys_lightning.train", f"hydra.run.dir={a_file}")
    assert (result.returncode, result.stderr.strip()) == (
        1,
        f"error: hydra.run.dir={a_file} is a file; point it at a folder (or a path that does not exist yet)",
    )


@pytest.mark.slow
def test_recommend_without_run_dir_is_one_line():
    result = run_module("recsys_lightning.recommend", "user_id=1")
    assert (result.returncode, result.stderr.strip()) == (
        1,
        "error: run_dir is not set: set run_dir=<a training run folder>, e.g. run_dir=outputs/runs/<date>/<time>_<name>",
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["+trainer.max_epoch=3"], "trainer.max_epoch: Trainer has no such setting; did you mean trainer.max_epochs?"),
        (["+model.dimm=8"], "model.dimm: MatrixFactorization has no such setting; did you mean model.dim?"),
        (
            ["+loss.temprature=0.5", "loss=softmax"],
            "loss.temprature: SampledSoftmaxLoss has no such setting; did you mean loss.temperature?",
        ),
        # a preset's key kept after swapping the model it was meant for
        (["experiment=ml100k_cold_items", "model=popularity"], "model.features: Popularity has no such setting; it takes sparse_gradients"),
    ],
)
def test_a_key_the_class_does_not_take_is_named_with_the_closest_one(overrides, message):
    assert refused(check_training_config, training_config(*overrides)) == message
