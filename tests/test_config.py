"""Every option of every config group composes, resolves and builds what it names."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recsys_lightning.config import PROJECT_ROOT, register_resolvers
from recsys_lightning.module import RecommenderModule

CONF = PROJECT_ROOT / "conf"
OPTIONS = [
    (group.name, option.stem)
    for group in sorted(CONF.iterdir())
    if group.is_dir() and group.name not in {"hydra"}
    for option in sorted(group.glob("*.yaml"))
]


def composed(*overrides: str, run_dir: Path):
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"paths.run_dir={run_dir}", "run_name=test", *overrides])


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_option_composes_and_resolves(group, option, tmp_path):
    cfg = composed(f"{group}={option}", run_dir=tmp_path)
    OmegaConf.resolve(cfg)  # every interpolation has a value
    assert cfg.seed == 42


def test_callbacks_loggers_and_trainer_instantiate(tmp_path):
    cfg = composed(run_dir=tmp_path)
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
    cfg = composed(f"scheduler={scheduler}", run_dir=tmp_path)
    plain = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
    module = RecommenderModule(
        5, 7, model=plain(cfg.model), loss=plain(cfg.loss), sampler=plain(cfg.sampler),
        optimizer=plain(cfg.optimizer), scheduler=plain(cfg.scheduler),
    )  # fmt: skip
    configured = module.configure_optimizers()
    if expected is None:
        assert isinstance(configured, torch.optim.Adam)
    else:
        assert isinstance(configured["lr_scheduler"]["scheduler"], expected)
        assert configured["optimizer"].param_groups[0]["lr"] == cfg.optimizer.lr


def test_experiment_presets_override_defaults(tmp_path):
    mf = composed("experiment=ml100k_mf", run_dir=tmp_path)
    assert mf.loss._target_.endswith("FullSoftmaxLoss") and mf.loss.l2 == pytest.approx(0.1)
    ncf = composed("experiment=ml100k_ncf", run_dir=tmp_path)
    assert ncf.model._target_.endswith("NeuMF") and list(ncf.model.hidden) == [32, 16]


def test_slurm_launcher_preset_composes_on_the_submitit_plugin(tmp_path):
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.run_dir={tmp_path}", "run_name=test", "hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.timeout_min, launcher.tasks_per_node, launcher.array_parallelism) == (240, 1, 16)


@pytest.mark.parametrize("model", ["mf", "hybrid", "ncf"])
def test_sparse_optimizers_turn_on_sparse_gradients(model, tmp_path):
    cfg = composed(f"model={model}", "optimizer=sparse_adagrad", run_dir=tmp_path)
    assert cfg.model.sparse_gradients is True and cfg.optimizer._target_ == "torch.optim.Adagrad"
    assert composed(f"model={model}", run_dir=tmp_path).model.sparse_gradients is False
