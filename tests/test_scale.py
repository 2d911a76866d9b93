"""Trust at scale, through the real entry point: DDP equals one process, a SIGKILLed run resumes to the
same metrics, the same config gives the same metrics twice, a NaN loss stops the run cleanly."""

import json
import signal
from pathlib import Path

import pytest
import torch

from recsys_lightning.data.batches import EpochBatchSampler
from recsys_lightning.evaluate import compare_with_recorded, evaluate

from helpers import SMALL_RUN, run_module, training_config

# Small synthetic data, a few quick epochs, bit-exact on CPU.
RUN = [*SMALL_RUN, "trainer.max_epochs=4", "trainer.deterministic=true"]


def train(output_dir: Path, *overrides: str, fault_injection: bool = False):
    return run_module("recsys_lightning.train", *RUN, f"paths.output_dir={output_dir}", *overrides, fault_injection=fault_injection)


def run_dir_of(output_dir: Path) -> Path:
    (run_dir,) = [path.parent for path in output_dir.glob("runs/*/*/.hydra")]
    return run_dir


def metrics_of(output_dir: Path) -> dict:
    metrics = json.loads((run_dir_of(output_dir) / "metrics.json").read_text())
    return {name: value for name, value in metrics.items() if name.startswith(("val/", "test/")) or name in ("best_epoch", "epochs")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    result = train(output_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return metrics_of(output_dir)


def test_batches_are_sharded_across_processes_without_duplicates():
    shards = [list(EpochBatchSampler(1003, 64, seed=5, rank=rank, num_replicas=3)) for rank in range(3)]
    assert len({len(shard) for shard in shards}) == 1  # every process runs the same number of steps
    indices = torch.cat([torch.cat(shard) for shard in shards])
    assert len(indices) == 1002 and len(torch.unique(indices)) == 1002  # 1003 % 3 left out, none repeated
    alone = torch.cat(list(EpochBatchSampler(1003, 64, seed=5)))
    assert set(indices.tolist()) == set(alone[:1002].tolist())  # the same epoch permutation, split three ways


@pytest.mark.slow
def test_same_config_gives_identical_metrics_twice(tmp_path, uninterrupted):
    result = train(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert metrics_of(tmp_path) == uninterrupted


@pytest.mark.slow
def test_sigkilled_run_resumes_from_last_checkpoint_to_the_same_metrics(tmp_path, uninterrupted):
    kill = ["+callbacks.kill._target_=fault_injection.KillAt", "+callbacks.kill.epoch=2", "+callbacks.kill.batch=5"]
    kill.append(f"+callbacks.kill.once={tmp_path / 'once'}")  # a resume keeps the config: the callback stays, fired
    killed = train(tmp_path, *kill, fault_injection=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = run_dir_of(tmp_path)
    assert not (run_dir / "metrics.json").exists()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1  # epochs 0 and 1 finished

    resumed = train(tmp_path, *kill, f"hydra.run.dir={run_dir}", "ckpt_path=last", fault_injection=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout
    assert metrics_of(tmp_path) == uninterrupted


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "sparse_adam"])  # sparse: the tables' sparse gradients all-reduced as such (ddp.py)
def test_two_process_ddp_metrics_equal_one_process_evaluation_of_the_same_model(tmp_path, optimizer):
    result = train(tmp_path, "trainer=ddp", "trainer.devices=2", "trainer.max_epochs=2", f"optimizer={optimizer}")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = run_dir_of(tmp_path)
    assert (run_dir / "train_ddp_process_1.log").is_file()  # a second process really trained
    for split in ("test", "valid"):
        single_process = evaluate(run_dir, split=split, accelerator="cpu")
        table = compare_with_recorded(single_process, run_dir, tolerance=1e-6)
        assert len(table) >= 10 and table["equal"].all(), table


@pytest.mark.slow
def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    result = train(
        tmp_path,
        "+callbacks.poison._target_=fault_injection.PoisonWeightsAt",
        "+callbacks.poison.epoch=1",
        "+callbacks.poison.batch=3",
        fault_injection=True,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert errors[0].startswith("error: the loss became nan at epoch 1, batch 3")
    assert "last good checkpoint" in errors[0] and "gradient_clip_val" in errors[0]
    run_dir = run_dir_of(tmp_path)
    assert not (run_dir / "metrics.json").exists()
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0
    assert all(torch.isfinite(value).all() for value in last["state_dict"].values() if value.is_floating_point())


def test_gradient_clipping_is_a_trainer_key():
    from hydra.utils import instantiate

    cfg = training_config("trainer.gradient_clip_val=0.5")
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.gradient_clip_val == 0.5 and trainer.gradient_clip_algorithm == "norm"
