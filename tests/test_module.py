"""The LightningModule trained on small in-memory data: it learns, it is reproducible, it reloads."""

import math

import pytest
import pytorch_lightning as pl
import torch

from recsys_lightning.build import build_module
from recsys_lightning.data.batches import RankingChunk, TrainingBatch
from recsys_lightning.metrics import PointwiseMetrics
from recsys_lightning.module import RecommenderModule
from recsys_lightning.samplers import UniformSampler

from helpers import MODULE_CONFIG, FrameDataModule, module_config, planted_data, planted_frame, quiet_trainer


def fit(tmp_path, seed=0, epochs=15):
    pl.seed_everything(seed, verbose=False)
    datamodule = FrameDataModule(planted_frame(), batch_size=256, seed=seed)
    datamodule.setup("fit")
    module = build_module(module_config(seed=seed), datamodule.training_data)
    trainer = quiet_trainer(max_epochs=epochs, default_root_dir=tmp_path)
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
    restored = RecommenderModule.load_from_checkpoint(path, data=module.data)
    users = torch.arange(5)
    assert torch.equal(restored.model.score_all(users), module.model.score_all(users))


def fit_with_loss(tmp_path, loss_target, epochs=2):
    pl.seed_everything(0, verbose=False)
    datamodule = FrameDataModule(planted_frame().assign(rating=lambda f: (f.item_id % 5 + 1).astype("float32")), batch_size=256)
    datamodule.setup("fit")
    module = build_module(module_config(loss={"_target_": loss_target, "l2": 1e-4}), datamodule.training_data)
    trainer = quiet_trainer(max_epochs=epochs, enable_checkpointing=False, default_root_dir=tmp_path)
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


def two_user_chunk() -> RankingChunk:
    """Two users of a 5-item catalogue: user 0 holds out items 1 and 2 (has seen 4), user 1 holds out 3 (has seen 0)."""
    return RankingChunk(
        users=torch.tensor([0, 1]),
        exclude_rows=torch.tensor([0, 1]),
        exclude_items=torch.tensor([4, 0]),
        heldout_rows=torch.tensor([0, 0, 1]),
        heldout_items=torch.tensor([1, 2, 3]),
        heldout_ratings=torch.ones(3),
    )


def test_bce_validation_scores_held_out_positives_against_unseen_negatives():
    chunk = two_user_chunk()
    confident = torch.full((2, 5), -10.0)
    confident[chunk.heldout_rows, chunk.heldout_items] = 10.0
    # Excluded items score high: if one were drawn as a negative, AUC would drop below 1.
    confident[chunk.exclude_rows, chunk.exclude_items] = 50.0
    metric = PointwiseMetrics()
    metric.update(confident, chunk, chunk_seed=0)
    assert metric.compute()["auc"].item() == 1.0
    assert metric.compute()["bce"].item() == pytest.approx(math.log1p(math.exp(-10.0)), rel=1e-2)  # float32
    metric.reset()
    metric.update(-confident.clamp(max=10.0), chunk, chunk_seed=0)
    assert metric.compute()["auc"].item() == 0.0
    assert metric.compute()["bce"].item() == pytest.approx(10.0, rel=1e-3)


def test_auc_needs_no_threshold_and_counts_ties_half():
    """All logits below 0 (a model trained with 4 negatives per positive) once read accuracy 0.5; AUC
    still sees the order. Hand-computed: user 0's positives 1 (-1) and 2 (-6) each against an unseen item
    scoring -5; user 1's positive 3 (-2) against unseen items that all score -2 too (a tie)."""
    chunk = two_user_chunk()
    scores = torch.full((2, 5), -5.0)
    scores[0, 1], scores[0, 2], scores[1, 3] = -1.0, -6.0, -2.0
    scores[1, 1], scores[1, 2], scores[1, 4] = -2.0, -2.0, -2.0  # user 1's only candidates tie with its positive
    metric = PointwiseMetrics()
    metric.update(scores, chunk, chunk_seed=0)
    # user 0: -1 > -5 (1), -6 < -5 (0); user 1: tie (0.5) -> (1 + 0 + 0.5) / 3
    assert metric.compute()["auc"].item() == pytest.approx(0.5)


SPARSE_ADAM = {"_target_": "torch.optim.SparseAdam", "_partial_": True, "lr": 0.05}


def test_sparse_gradients_touch_only_the_batch_rows_and_score_the_same():
    torch.manual_seed(0)
    data = planted_data()
    config = module_config(model={**MODULE_CONFIG.model, "sparse_gradients": True}, optimizer=SPARSE_ADAM)
    module = build_module(config, data)
    dense = build_module(MODULE_CONFIG, data)
    dense.load_state_dict(module.state_dict())
    users, items = torch.tensor([1, 2, 2]), torch.tensor([[3, 4], [5, 6], [7, 3]])
    torch.testing.assert_close(module.model.score(users, items), dense.model.score(users, items))

    before = {name: value.clone() for name, value in module.model.named_parameters()}
    scores, penalty = module.model.score_with_penalty(users, items)
    (scores.sum() + penalty).backward()
    assert all(parameter.grad.is_sparse for parameter in module.model.parameters())
    module.configure_optimizers().step()
    item_factors = module.model.item_factors.detach()
    touched = torch.zeros(module.model.num_items, dtype=torch.bool)
    touched[items.flatten()] = True
    assert torch.equal(item_factors[~touched], before["item_factors"][~touched])
    assert not torch.equal(item_factors[touched], before["item_factors"][touched])


def test_sparse_adam_learns_the_planted_structure(tmp_path):
    config = module_config(model={**MODULE_CONFIG.model, "sparse_gradients": True}, optimizer=SPARSE_ADAM)
    pl.seed_everything(0, verbose=False)
    datamodule = FrameDataModule(planted_frame(), batch_size=256)
    datamodule.setup("fit")
    module = build_module(config, datamodule.training_data)
    trainer = quiet_trainer(max_epochs=15, enable_checkpointing=False, default_root_dir=tmp_path)
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

    module = build_module(module_config(model=model, optimizer=SPARSE_ADAM), planted_data())
    with pytest.raises(ConfigError, match=message):
        module.configure_optimizers()


class NoDrawing(UniformSampler):
    def sample(self, users, positive_items, model):
        raise AssertionError("a loss that uses no negatives drew some")


@pytest.mark.parametrize(("loss", "draws"), [("MSELoss", False), ("FullSoftmaxLoss", False), ("BPRLoss", True)])
def test_batch_loss_draws_negatives_only_for_losses_that_use_them(loss, draws):
    data = planted_data()
    module = build_module(module_config(loss={"_target_": f"recsys_lightning.losses.{loss}"}), data)
    module.sampler = NoDrawing()  # bound to the training positives on the first batch_loss
    batch = TrainingBatch(users=torch.tensor([0, 1, 2]), items=torch.tensor([3, 4, 5]), ratings=torch.tensor([5.0, 3.0, 1.0]))
    if draws:
        with pytest.raises(AssertionError, match="drew some"):
            module.batch_loss(batch)
    else:
        assert torch.isfinite(module.batch_loss(batch))
