"""The LightningModule trained on small in-memory data: it learns, it is reproducible, it reloads."""

import math

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import pytest
import torch

from recsys_lightning.module import RecommenderModule

from conftest import FrameDataModule

MODULE_CONFIG = dict(
    model={"_target_": "recsys_lightning.models.MatrixFactorization", "dim": 16},
    loss={"_target_": "recsys_lightning.losses.BPRLoss", "l2": 1e-4},
    sampler={"_target_": "recsys_lightning.samplers.UniformSampler", "num_negatives": 2},
    optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.05},
    ks=[10],
)


def planted_frame(seed=0) -> pd.DataFrame:
    """Two taste groups: users 0-29 pick items 0-49, users 30-59 pick items 50-99."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(60):
        group = user // 30
        for item in rng.choice(50, 20, replace=False) + 50 * group:
            rows.append((user, item, 5.0, len(rows)))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


def fit(tmp_path, seed=0, epochs=15):
    pl.seed_everything(seed, verbose=False)
    datamodule = FrameDataModule(planted_frame(), batch_size=256, seed=seed)
    datamodule.setup("fit")
    module = RecommenderModule(datamodule.num_users, datamodule.num_items, seed=seed, **MODULE_CONFIG)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    results = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    return trainer, module, results


def test_module_learns_planted_taste_groups(tmp_path):
    _, _, results = fit(tmp_path)
    # Random ranking of the 100 items finds ~10% of the 2 held-out items in the top 10 (recall ~0.1);
    # knowing the group alone lifts that to ~10 / (50 - 18) = 0.3.
    assert results["test/recall@10"] > 0.25


def test_same_seed_gives_identical_metrics(tmp_path):
    first = fit(tmp_path / "a", epochs=3)[2]
    again = fit(tmp_path / "b", epochs=3)[2]
    assert first == again


def test_checkpoint_rebuilds_module_without_pickled_objects(tmp_path):
    trainer, module, _ = fit(tmp_path, epochs=1)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["hyper_parameters"]["model"]["dim"] == 16
    restored = RecommenderModule.load_from_checkpoint(path)
    users = torch.arange(5)
    assert torch.equal(restored.model.score_all(users), module.model.score_all(users))


def fit_with_loss(tmp_path, loss_target, epochs=2):
    pl.seed_everything(0, verbose=False)
    datamodule = FrameDataModule(planted_frame().assign(rating=lambda f: (f.item_id % 5 + 1).astype("float32")), batch_size=256)
    datamodule.setup("fit")
    config = dict(MODULE_CONFIG, loss={"_target_": loss_target, "l2": 1e-4})
    module = RecommenderModule(datamodule.num_users, datamodule.num_items, **config)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    return trainer, module, datamodule


def test_mse_validation_reports_rmse_and_mae_of_held_out_ratings(tmp_path):
    trainer, module, datamodule = fit_with_loss(tmp_path, "recsys_lightning.losses.MSELoss")
    users = torch.from_numpy(datamodule.interactions.users[datamodule.split.valid])
    items = torch.from_numpy(datamodule.interactions.items[datamodule.split.valid])
    ratings = torch.from_numpy(datamodule.interactions.ratings[datamodule.split.valid])
    with torch.no_grad():
        errors = module.model.score(users, items) - ratings
    assert trainer.callback_metrics["val/rmse"].item() == pytest.approx(errors.square().mean().sqrt().item(), rel=1e-4)
    assert trainer.callback_metrics["val/mae"].item() == pytest.approx(errors.abs().mean().item(), rel=1e-4)


def test_bce_validation_scores_held_out_positives_against_unseen_negatives(tmp_path):
    module = RecommenderModule(3, 5, **dict(MODULE_CONFIG, loss={"_target_": "recsys_lightning.losses.BCELoss"}))
    batch = {
        "users": torch.tensor([0, 1]),
        "exclude_rows": torch.tensor([0, 1]), "exclude_items": torch.tensor([4, 0]),
        "heldout_rows": torch.tensor([0, 0, 1]), "heldout_items": torch.tensor([1, 2, 3]),
    }  # fmt: skip
    confident = torch.full((2, 5), -10.0)
    confident[batch["heldout_rows"], batch["heldout_items"]] = 10.0
    # Excluded items score high: if one were drawn as a negative, accuracy would drop below 1.
    confident[batch["exclude_rows"], batch["exclude_items"]] = 50.0
    module._update_pointwise(confident, batch, batch_idx=0)
    assert module.val_accuracy.compute().item() == 1.0
    assert module.val_bce.compute().item() == pytest.approx(math.log1p(math.exp(-10.0)), rel=1e-2)  # float32
    module.val_bce.reset(), module.val_accuracy.reset()
    module._update_pointwise(-confident.clamp(max=10.0), batch, batch_idx=0)
    assert module.val_accuracy.compute().item() == 0.0
    assert module.val_bce.compute().item() == pytest.approx(10.0, rel=1e-3)


SPARSE_ADAM = {"_target_": "torch.optim.SparseAdam", "_partial_": True, "lr": 0.05}


def test_sparse_gradients_touch_only_the_batch_rows_and_score_the_same():
    torch.manual_seed(0)
    config = dict(MODULE_CONFIG, model={**MODULE_CONFIG["model"], "sparse_gradients": True}, optimizer=SPARSE_ADAM)
    module = RecommenderModule(50, 80, **config)
    dense = RecommenderModule(50, 80, **MODULE_CONFIG)
    dense.load_state_dict(module.state_dict())
    users, items = torch.tensor([1, 2, 2]), torch.tensor([[3, 4], [5, 6], [7, 3]])
    torch.testing.assert_close(module.model.score(users, items), dense.model.score(users, items))

    before = {name: value.clone() for name, value in module.model.named_parameters()}
    scores, penalty = module.model.score_with_penalty(users, items)
    (scores.sum() + penalty).backward()
    assert all(parameter.grad.is_sparse for parameter in module.model.parameters())
    module.configure_optimizers().step()
    item_factors = module.model.item_factors.detach()
    touched = torch.zeros(80, dtype=torch.bool)
    touched[items.flatten()] = True
    assert torch.equal(item_factors[~touched], before["item_factors"][~touched])
    assert not torch.equal(item_factors[touched], before["item_factors"][touched])


def test_sparse_adam_learns_the_planted_structure(tmp_path):
    config = dict(MODULE_CONFIG, model={**MODULE_CONFIG["model"], "sparse_gradients": True}, optimizer=SPARSE_ADAM)
    pl.seed_everything(0, verbose=False)
    datamodule = FrameDataModule(planted_frame(), batch_size=256)
    datamodule.setup("fit")
    module = RecommenderModule(datamodule.num_users, datamodule.num_items, **config)
    trainer = pl.Trainer(max_epochs=15, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    assert trainer.test(module, datamodule=datamodule, verbose=False)[0]["test/recall@10"] > 0.25


@pytest.mark.parametrize(
    "model, message",
    [
        ({"_target_": "recsys_lightning.models.NeuMF", "hidden": [8], "sparse_gradients": True}, "use optimizer=sparse_adagrad"),
        ({"_target_": "recsys_lightning.models.MatrixFactorization", "dim": 8}, "needs model.sparse_gradients=true"),
    ],
)
def test_sparse_adam_refuses_what_it_cannot_train(model, message):
    from recsys_lightning.errors import ConfigError

    module = RecommenderModule(10, 20, **dict(MODULE_CONFIG, model=model, optimizer=SPARSE_ADAM))
    with pytest.raises(ConfigError, match=message):
        module.configure_optimizers()
