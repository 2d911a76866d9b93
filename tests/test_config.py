"""Every option of every config group composes, resolves and builds what it names."""

from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recsys_lightning.build import build_module

from helpers import CONF, FrameDataModule, all_options, compose_config, compose_in_full, option_config, random_interactions, training_config


def set_by(group: str, option: str) -> dict[str, Any]:
    """The values `conf/<group>/<option>.yaml` sets, by dotted key of the composed config, as written."""
    path = CONF / group / f"{option}.yaml"
    written = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    written.pop("defaults", None)  # other options, composed in their place
    written.pop("hydra", None)  # Hydra's own settings, not part of a run's config
    at_top = path.read_text().startswith("# @package _global_")
    return dict(leaves(written, "" if at_top else f"{group}."))


def leaves(node: dict, prefix: str):
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def unresolved(cfg, key: str) -> Any:
    node = OmegaConf.to_container(cfg, resolve=False)
    for part in key.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize(("group", "option"), all_options())
def test_option_composes_and_resolves(group, option):
    cfg = option_config(group, option)
    expected = {key: value for key, value in set_by(group, option).items() if key not in ("paths.run_dir", "run_name")}  # set by the test
    assert {key: unresolved(cfg, key) for key in expected} == expected  # the option took effect
    OmegaConf.resolve(cfg)  # every interpolation has a value
    assert cfg.seed == 42


def test_callbacks_loggers_and_trainer_instantiate(tmp_path):
    cfg = training_config(run_dir=tmp_path)
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    loggers = [instantiate(logger) for logger in cfg.logger.values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    assert trainer.early_stopping_callback.monitor == "val/ndcg@10"
    assert trainer.checkpoint_callback.monitor == "val/ndcg@10"


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [("none", None), ("plateau", torch.optim.lr_scheduler.ReduceLROnPlateau), ("cosine", torch.optim.lr_scheduler.CosineAnnealingLR)],
)
def test_scheduler_options_reach_the_optimizer(scheduler, expected, tmp_path):
    cfg = training_config(f"scheduler={scheduler}", run_dir=tmp_path)
    datamodule = FrameDataModule(random_interactions(num_users=20, num_items=30, per_user=10))
    datamodule.setup("fit")
    module = build_module(cfg, datamodule.training_data)
    configured = module.configure_optimizers()
    if expected is None:
        assert isinstance(configured, torch.optim.Adam)
    else:
        assert isinstance(configured["lr_scheduler"]["scheduler"], expected)
        assert configured["optimizer"].param_groups[0]["lr"] == cfg.optimizer.lr


def test_experiment_presets_override_defaults(tmp_path):
    mf = training_config("experiment=ml100k_mf", run_dir=tmp_path)
    assert mf.loss._target_.endswith("FullSoftmaxLoss") and mf.loss.l2 == pytest.approx(0.1)
    ncf = training_config("experiment=ml100k_ncf", run_dir=tmp_path)
    assert ncf.model._target_.endswith("NeuMF") and list(ncf.model.hidden) == [32, 16]


def test_slurm_launcher_preset_composes_on_the_submitit_plugin(tmp_path):
    cfg = training_config("hydra/launcher=slurm", run_dir=tmp_path, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.timeout_min, launcher.tasks_per_node, launcher.array_parallelism) == (240, 1, 16)


@pytest.mark.parametrize("model", ["mf", "hybrid", "ncf"])
def test_sparse_optimizers_turn_on_sparse_gradients(model, tmp_path):
    cfg = training_config(f"model={model}", "optimizer=sparse_adagrad", run_dir=tmp_path)
    assert cfg.model.sparse_gradients is True and cfg.optimizer._target_ == "torch.optim.Adagrad"
    assert training_config(f"model={model}", run_dir=tmp_path).model.sparse_gradients is False


def test_debug_quick_trains_a_few_batches_and_evaluates_in_full_even_over_an_experiment(tmp_path):
    cfg = training_config("debug=quick", "experiment=ml100k_ncf", run_dir=tmp_path)
    assert (cfg.trainer.max_epochs, cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches) == (1, 3, None)
    assert cfg.projector.max_items == 0 and cfg.callbacks.progress_bar.refresh_rate == 0
    assert cfg.run_test is True and cfg.model._target_.endswith("NeuMF")


@pytest.mark.parametrize(
    ("config_name", "overrides"),
    [
        ("config", ["paths.run_dir=.", "run_name=test"]),
        ("config", ["paths.run_dir=.", "run_name=test", "model=mf", "model.dim=8", "data.batch_size=auto", "+extra.key=1"]),
        ("config", ["paths.run_dir=.", "run_name=test", "experiment=ml100k_ncf", "loss=bce", "~callbacks.early_stopping"]),
        ("config", ["paths.run_dir=.", "run_name=test", "~logger", "trainer.max_epochs=1", "trainer.max_epochs=3", "++seed=5"]),
        ("config", ["paths.run_dir=.", "run_name=test", "data=csv", "data.path=x.csv", "debug=quick", "eval.ks=[5,10]"]),
        ("evaluate", ["run_dir=/a", "retrieval.run_dir=/b", "callbacks.progress_log.interval_seconds=0"]),
        ("recommend", ["run_dir=/a", "user_id=42", "item_id=1"]),
    ],
)
def test_composing_choices_once_then_the_key_overrides_equals_hydra_compose(config_name, overrides):
    """compose_config (the tests' helper) composes group choices once a session and applies key overrides to
    a copy: every config a test reads must be the one Hydra's compose gives for the same overrides."""
    composed, in_full = compose_config(config_name, *overrides), compose_in_full(config_name, *overrides)
    assert OmegaConf.to_yaml(composed) == OmegaConf.to_yaml(in_full)
    assert OmegaConf.is_struct(composed) and OmegaConf.is_struct(in_full)


@pytest.mark.parametrize("bad", ["model.no_such_key=1", "~callbacks.no_such_callback", "model=no_such_model", "trainer.max_epochs=[1"])
def test_a_bad_override_fails_as_in_hydra_compose(bad):
    failures = []
    for compose in (compose_config, compose_in_full):
        with pytest.raises(Exception) as error:
            compose("config", "paths.run_dir=.", "run_name=test", bad)
        failures.append((type(error.value), str(error.value)))
    assert failures[0] == failures[1]
