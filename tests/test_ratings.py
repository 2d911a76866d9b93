"""Rating prediction: the run is judged by val/rmse, MF scores around the training mean, test reports
RMSE and MAE, and data without ratings is refused before training."""

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from recsys_lightning.build import build_module
from recsys_lightning.data.csv import CsvDataModule
from recsys_lightning.data.synthetic import SyntheticDataModule
from recsys_lightning.errors import ConfigError
from recsys_lightning.models import MatrixFactorization
from recsys_lightning.validation import check_training_config

from helpers import FrameDataModule, module_config, quiet_trainer, random_interactions, run_module, training_config

MSE = {"_target_": "recsys_lightning.losses.MSELoss", "l2": 1e-3}


# --- the monitor follows the loss ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss", "metric", "mode"),
    [("mse", "val/rmse", "min"), ("bpr", "val/ndcg@10", "max"), ("bce", "val/ndcg@10", "max"), ("full_softmax", "val/ndcg@10", "max")],
)
def test_monitor_of_every_watcher_follows_the_loss(loss, metric, mode, tmp_path):
    cfg = training_config(f"loss={loss}", "scheduler=plateau", run_dir=tmp_path)
    check_training_config(cfg)
    callbacks = {name: instantiate(callback) for name, callback in cfg.callbacks.items()}
    for name in ("early_stopping", "model_checkpoint"):
        assert (callbacks[name].monitor, callbacks[name].mode) == (metric, mode)
    assert (cfg.scheduler.monitor, cfg.scheduler.scheduler.mode) == (metric, mode)
    assert cfg.optimized_metric == metric


def test_monitor_set_by_the_user_replaces_the_loss_default_and_brings_its_mode(tmp_path):
    errors = training_config("loss=mse", "monitor.metric=val/mae", run_dir=tmp_path)
    assert (errors.callbacks.early_stopping.monitor, errors.callbacks.early_stopping.mode, errors.optimized_metric) == (
        "val/mae",
        "min",
        "val/mae",
    )
    ranking = training_config("loss=bpr", "monitor.metric=val/recall@20", run_dir=tmp_path)
    assert (ranking.callbacks.model_checkpoint.monitor, ranking.callbacks.model_checkpoint.mode) == ("val/recall@20", "max")


def test_a_callbacks_own_monitor_wins_over_the_loss_default(tmp_path):
    cfg = training_config("loss=mse", "callbacks.model_checkpoint.monitor=val/mae", run_dir=tmp_path)
    check_training_config(cfg)
    assert (cfg.callbacks.model_checkpoint.monitor, cfg.callbacks.model_checkpoint.mode) == ("val/mae", "min")
    assert cfg.callbacks.early_stopping.monitor == "val/rmse"


def test_monitor_watched_in_the_wrong_direction_is_refused_by_the_key_the_user_sets(tmp_path):
    for overrides, message in [
        (("loss=mse", "monitor.mode=max"), "monitor.mode=max, but monitor.metric=val/rmse is better when lower: set monitor.mode=min"),
        (("loss=bpr", "monitor.mode=min"), "monitor.mode=min, but monitor.metric=val/ndcg@10 is better when higher: set monitor.mode=max"),
    ]:
        with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.") + "$"):
            check_training_config(training_config(*overrides, run_dir=tmp_path))


def test_ratings_preset_keeps_every_rating_and_is_judged_by_validation_rmse(tmp_path):
    cfg = training_config("experiment=ml100k_ratings", run_dir=tmp_path)
    check_training_config(cfg)
    assert cfg.loss._target_.endswith("MSELoss") and cfg.data.min_rating is None
    assert (cfg.callbacks.model_checkpoint.monitor, cfg.callbacks.model_checkpoint.mode) == ("val/rmse", "min")


@pytest.mark.parametrize(("loss", "direction"), [("mse", "minimize"), ("bpr", "maximize")])
def test_optuna_search_minimises_rmse_and_maximises_ranking(loss, direction, tmp_path):
    cfg = training_config(f"loss={loss}", "hparams_search=optuna", run_dir=tmp_path, return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == direction


# --- MF predicts mu + b_u + b_i + <p_u, q_i> -----------------------------------------------------------


def test_mf_rating_prediction_includes_the_global_mean():
    torch.manual_seed(0)
    model = MatrixFactorization(num_users=3, num_items=4, dim=2)
    with torch.no_grad():
        model.user_bias.normal_()
        model.item_bias.normal_()
    model.set_global_mean(3.5)
    users, items = torch.tensor([0, 1, 2, 2]), torch.tensor([3, 0, 1, 2])
    expected = 3.5 + model.user_bias[users, 0] + model.item_bias[items, 0] + (model.user_factors[users] * model.item_factors[items]).sum(-1)
    with torch.no_grad():
        assert torch.allclose(model.score(users, items), expected)
        assert torch.allclose(model.score_all(users)[torch.arange(4), items], expected)
        assert torch.allclose(model.query_vectors(users) @ model.item_vectors().T, model.score_all(users))
        assert torch.allclose(model.score_items(users, items)[torch.arange(4), torch.arange(4)], expected)


def test_module_sets_the_mean_training_rating_for_mse_only():
    frame = random_interactions(num_users=30, num_items=40, per_user=12, seed=2)
    datamodule = FrameDataModule(frame)
    datamodule.setup("fit")
    train_mean = float(datamodule.interactions.ratings[datamodule.split.train].mean())
    assert abs(train_mean - frame["rating"].mean()) > 0.02  # the training part's mean, not all ratings'
    assert build_module(module_config(loss=MSE), datamodule.training_data).model.global_mean.item() == pytest.approx(train_mean, rel=1e-6)
    assert build_module(module_config(), datamodule.training_data).model.global_mean.item() == 0.0


def test_checkpoint_without_a_global_mean_loads_with_mean_zero():
    model = MatrixFactorization(num_users=3, num_items=4, dim=2)
    model.set_global_mean(4.0)
    older = {name: value for name, value in model.state_dict().items() if name != "global_mean"}
    restored = MatrixFactorization(num_users=3, num_items=4, dim=2)
    restored.set_global_mean(2.0)
    restored.load_state_dict(older)  # strict: the missing mean is filled, not an error
    assert restored.global_mean.item() == 0.0 and torch.equal(restored.user_factors, model.user_factors)


# --- test reports RMSE and MAE -------------------------------------------------------------------------


def test_test_stage_reports_rmse_and_mae_of_held_out_ratings(tmp_path):
    datamodule = FrameDataModule(random_interactions(num_users=30, num_items=40, per_user=12), batch_size=128)
    datamodule.setup("fit")
    module = build_module(module_config(loss=MSE), datamodule.training_data)
    trainer = quiet_trainer(max_epochs=2, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=datamodule)
    results = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    rows = datamodule.split.test
    users, items = (torch.from_numpy(column[rows]) for column in (datamodule.interactions.users, datamodule.interactions.items))
    with torch.no_grad():
        errors = module.model.score(users, items) - torch.from_numpy(datamodule.interactions.ratings[rows])
    assert results["test/rmse"] == pytest.approx(errors.square().mean().sqrt().item(), rel=1e-4)
    assert results["test/mae"] == pytest.approx(errors.abs().mean().item(), rel=1e-4)


# --- data without ratings ------------------------------------------------------------------------------


def unrated_csv(tmp_path):
    frame = random_interactions(num_users=20, num_items=30, per_user=8).drop(columns="rating")
    path = tmp_path / "clicks.csv"
    frame.rename(columns={"user_id": "userId", "item_id": "itemId"}).to_csv(path, index=False)
    return path


def test_mse_on_data_without_ratings_names_the_missing_column_and_the_fix(tmp_path):
    path = unrated_csv(tmp_path)
    datamodule = CsvDataModule(path=str(path))
    datamodule.setup("fit")
    with pytest.raises(ConfigError) as refused:
        build_module(module_config(loss=MSE), datamodule.training_data)
    assert str(refused.value) == (
        f"MSELoss predicts ratings, but {path} has no rating column 'rating' (columns: 'userId', 'itemId', 'timestamp'): "
        "set data.rating_col to the column holding ratings, or train a ranking loss such as loss=bpr"
    )
    build_module(module_config(), datamodule.training_data)  # a ranking loss does not need them
    synthetic = SyntheticDataModule(num_users=30, num_items=20, num_interactions=200)
    synthetic.setup("fit")
    with pytest.raises(ConfigError, match="^MSELoss predicts ratings, but synthetic data has no ratings"):
        build_module(module_config(loss=MSE), synthetic.training_data)


@pytest.mark.slow
def test_entry_point_refuses_mse_without_ratings_in_one_line_before_training(tmp_path):
    path = unrated_csv(tmp_path)
    result = run_module("recsys_lightning.train", "data=csv", f"data.path={path}", "loss=mse", f"paths.output_dir={tmp_path / 'out'}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: MSELoss predicts ratings, but {path} has no rating column 'rating'")
    assert not list(tmp_path.glob("out/runs/*/*/checkpoints/*.ckpt"))


# --- through the entry point: the best checkpoint is the lowest val/rmse -------------------------------


def validation_rmse_by_epoch(run_dir) -> dict[int, float]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    epoch_at_step = {event.step: int(event.value) for event in events.Scalars("epoch")}
    return {epoch_at_step[event.step]: event.value for event in events.Scalars("val/rmse")}


@pytest.mark.slow
def test_mse_run_keeps_the_checkpoint_of_lowest_validation_rmse_and_tests_it(tmp_path):
    # Ratings are user and item effects plus noise: unregularised MF at a high learning rate learns the
    # effects, then fits the noise, so validation RMSE falls and rises again within a few epochs.
    frame = random_interactions(num_users=60, num_items=80, per_user=25, seed=3)
    rng = np.random.default_rng(3)
    user_effect, item_effect = rng.normal(0, 0.7, 60), rng.normal(0, 0.7, 80)
    noisy = 3 + user_effect[frame["user_id"] - 100] + item_effect[frame["item_id"] - 1000] + rng.normal(0, 0.8, len(frame))
    frame["rating"] = np.clip(np.round(noisy), 1, 5)
    frame.rename(columns={"user_id": "userId", "item_id": "itemId"}).to_csv(tmp_path / "ratings.csv", index=False)
    output_dir = tmp_path / "out"
    result = run_module(
        "recsys_lightning.train",
        "data=csv",
        f"data.path={tmp_path / 'ratings.csv'}",
        "data.batch_size=256",
        "loss=mse",
        "loss.l2=0",
        "model.dim=32",
        "optimizer.lr=0.05",
        "trainer.max_epochs=8",
        "callbacks.early_stopping.patience=20",
        "callbacks.progress_bar.refresh_rate=0",
        "projector.max_items=0",
        f"paths.output_dir={output_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [path.parent for path in output_dir.glob("runs/*/*/.hydra")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 < metrics["test/mae"] < metrics["test/rmse"] < 3
    per_epoch = validation_rmse_by_epoch(run_dir)
    assert sorted(per_epoch) == list(range(8))
    best_epoch = min(per_epoch, key=per_epoch.get)
    assert 0 < best_epoch < 7  # it fell, then rose: a max-mode monitor would have kept another epoch
    assert metrics["best_epoch"] == best_epoch
    assert metrics["val/rmse"] == pytest.approx(per_epoch[best_epoch], rel=1e-5)
    checkpoint = torch.load(run_dir / metrics["best_checkpoint"], weights_only=True)
    assert checkpoint["state_dict"]["model.global_mean"].item() == pytest.approx(np.mean(frame["rating"]), abs=0.2)
