"""Issue 21, defects 9 and 10: every run that exits 0 leaves a best checkpoint serving can use, however
training ends; a killed sweep resumes as a whole with the command it printed."""

import json
import time

import pytest
import pytorch_lightning as pl
import torch

from recsys_lightning.checkpoint_file import find_checkpoint
from recsys_lightning.errors import ConfigError
from recsys_lightning.train import train as run_training
from recsys_lightning.trained_run import load_trained
from recsys_lightning.validation import check_training_config

from helpers import run_module, training_config

SMALL_RUN = [
    "data=synthetic",
    "data.num_users=300",
    "data.num_items=200",
    "data.num_interactions=6000",
    "data.batch_size=512",  # 10 training batches per epoch
    "trainer.accelerator=cpu",
    "callbacks.progress_bar.refresh_rate=0",
    "projector.max_items=0",
    "~logger",
]


class SleepAt(pl.Callback):
    """Sleeps `seconds` at the start of one batch, so trainer.max_time runs out there."""

    def __init__(self, epoch: int, batch: int, seconds: float) -> None:
        self.epoch, self.batch, self.seconds = epoch, batch, seconds

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            time.sleep(self.seconds)


def checkpoint_steps(run_dir) -> dict[str, tuple[int, int]]:
    """(epoch, global step) of each checkpoint file in the run."""
    loaded = {path.name: torch.load(path, weights_only=True) for path in (run_dir / "checkpoints").glob("*.ckpt")}
    return {name: (checkpoint["epoch"], checkpoint["global_step"]) for name, checkpoint in loaded.items()}


# -- defect 9: a run that exits 0 ends with a checkpoint ------------------------------------------------


@pytest.mark.slow
def test_validating_every_5_epochs_of_2_still_validates_and_checkpoints_the_last_epoch(tmp_path):
    run_dir = tmp_path / "run"
    result = run_module(
        "recsys_lightning.train", *SMALL_RUN, "trainer.check_val_every_n_epoch=5", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_checkpoint"] == "checkpoints/epoch001.ckpt" and metrics["best_epoch"] == 1
    assert checkpoint_steps(run_dir) == {"epoch001.ckpt": (1, 20), "last.ckpt": (1, 20)}
    for which in ("best", "last"):  # what recommend and evaluate serve
        assert load_trained(find_checkpoint(run_dir, which)).catalogue.num_items == 200


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, checkpoints",
    [
        # validated at epochs 2 and 5 as asked, and at the last epoch, 6
        (["trainer.check_val_every_n_epoch=3", "trainer.max_epochs=7"], {"last.ckpt": (6, 70)}),
        # max_steps ends training in the middle of epoch 1, between validations
        (["trainer.check_val_every_n_epoch=5", "+trainer.max_steps=14"], {"epoch001.ckpt": (1, 14), "last.ckpt": (1, 14)}),
        # max_time runs out at batch 3 of epoch 0
        (
            ["trainer.check_val_every_n_epoch=5", "+trainer.max_time=00:00:00:01", "+callbacks.sleep._target_=test_trust_sweep.SleepAt"]
            + ["+callbacks.sleep.epoch=0", "+callbacks.sleep.batch=2", "+callbacks.sleep.seconds=1.2"],
            {"epoch000.ckpt": (0, 3), "last.ckpt": (0, 3)},
        ),
        # a closed-form model stops after its one fitting step
        (["model=ease", "trainer.check_val_every_n_epoch=5"], {"epoch000.ckpt": (0, 1), "last.ckpt": (0, 1)}),
    ],
    ids=["max_epochs-between-validations", "max_steps-mid-epoch", "max_time", "closed-form"],
)
def test_whatever_ends_training_the_last_step_is_validated_and_checkpointed(tmp_path, overrides, checkpoints):
    run_dir = tmp_path / "run"
    metrics = run_training(training_config(*SMALL_RUN, "trainer.max_epochs=20", *overrides, run_dir=run_dir))
    found = checkpoint_steps(run_dir)
    assert {name: found[name] for name in checkpoints} == checkpoints
    assert (run_dir / metrics["best_checkpoint"]).is_file() and find_checkpoint(run_dir, "last").is_file()


@pytest.mark.slow
def test_a_run_stopped_before_its_first_step_fails_instead_of_writing_metrics_without_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as refused:
        run_training(training_config(*SMALL_RUN, "+trainer.max_time=00:00:00:00", run_dir=run_dir))
    assert str(refused.value) == (
        "training ended at epoch 0, step 0, before any validation, so no checkpoint was written to test or serve; "
        "give it more time or steps (trainer.max_time, trainer.max_steps)"
    )
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("+trainer.fast_dev_run=true", "trainer.fast_dev_run writes no checkpoint to test or serve; try a setup with debug=quick instead"),
        ("+trainer.enable_checkpointing=false", "trainer.enable_checkpointing=false leaves no checkpoint to test or serve; drop it"),
        (
            "+callbacks.model_checkpoint.every_n_epochs=3",
            "callbacks.model_checkpoint.every_n_epochs=3: checkpoints are written at every validation, so the best is picked "
            "over all of them; drop it, and set how often to validate with trainer.check_val_every_n_epoch",
        ),
        ("+callbacks.last_checkpoint.every_n_train_steps=100", "callbacks.last_checkpoint.every_n_train_steps=100: checkpoints are"),
        ("+callbacks.last_checkpoint.train_time_interval=60", "callbacks.last_checkpoint.train_time_interval=60: checkpoints are"),
        ("callbacks.model_checkpoint.save_top_k=0", "callbacks.model_checkpoint.save_top_k=0 keeps no best checkpoint to test or serve"),
        ("trainer.limit_val_batches=0", "trainer.limit_val_batches=0: must be an integer >= 1 or a number in (0, 1] or null"),
        ("trainer.limit_val_batches=0.0", "trainer.limit_val_batches=0.0: must be"),
    ],
)
def test_a_setting_that_would_leave_no_best_checkpoint_is_refused_up_front(override, message):
    with pytest.raises(ConfigError) as refused:
        check_training_config(training_config(override))
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize("unset", ["+callbacks.model_checkpoint.every_n_epochs=1", "+callbacks.last_checkpoint.every_n_train_steps=0"])
def test_checkpoint_schedules_that_follow_validation_are_accepted(unset):
    check_training_config(training_config(unset))


def test_advice_on_a_missing_checkpoint_names_only_a_checkpoint_the_run_holds(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError) as refused:
        find_checkpoint(run_dir, "last")
    assert str(refused.value).endswith("the run holds no checkpoint (it was stopped before its first validation): train it again")
    (run_dir / "checkpoints" / "epoch003.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError) as refused:
        find_checkpoint(run_dir, "last")
    advised = str(refused.value).rsplit("pass checkpoint=", 1)[1]
    assert advised == str(run_dir / "checkpoints" / "epoch003.ckpt") and find_checkpoint(run_dir, advised).is_file()
