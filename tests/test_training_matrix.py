"""Every model trains with every loss: a few epochs on small data, and the training loss falls."""

import pytest
import pytorch_lightning as pl

from recsys_lightning.build import build_module

from helpers import FrameDataModule, module_config, planted_frame, quiet_trainer

MODELS = {
    "mf": {"_target_": "recsys_lightning.models.MatrixFactorization", "dim": 8},
    "hybrid": {"_target_": "recsys_lightning.models.HybridMF", "dim": 8, "hidden": [8]},
    "ncf": {"_target_": "recsys_lightning.models.NeuMF", "gmf_dim": 8, "mlp_dim": 8, "hidden": [8]},
}
LOSSES = {
    "bpr": ("BPRLoss", {}),
    "bce": ("BCELoss", {}),
    "softmax": ("SampledSoftmaxLoss", {}),
    "full_softmax": ("FullSoftmaxLoss", {}),
    "mse": ("MSELoss", {}),
}


class EpochLosses(pl.Callback):
    """The module logs an epoch's train/loss in its own epoch-end hook, which runs after callbacks'."""

    def __init__(self) -> None:
        self.values = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if "train/loss" in trainer.callback_metrics:
            self.values.append(trainer.callback_metrics["train/loss"].item())

    def on_fit_end(self, trainer, pl_module) -> None:
        self.values.append(trainer.callback_metrics["train/loss"].item())


@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("model_name", MODELS)
def test_training_loss_falls(model_name, loss_name, tmp_path):
    pl.seed_everything(0, verbose=False)
    datamodule = FrameDataModule(planted_frame(), batch_size=128, seed=0)
    datamodule.setup("fit")
    loss_class, options = LOSSES[loss_name]
    config = module_config(
        model=MODELS[model_name],
        loss={"_target_": f"recsys_lightning.losses.{loss_class}", "l2": 1e-4, **options},
        sampler={"_target_": "recsys_lightning.samplers.UniformSampler", "num_negatives": 4},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01},
    )
    module = build_module(config, datamodule.training_data)
    losses = EpochLosses()
    trainer = quiet_trainer(max_epochs=5, enable_checkpointing=False, limit_val_batches=0, callbacks=[losses], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=datamodule)
    assert losses.values[-1] < 0.95 * losses.values[0], losses.values
