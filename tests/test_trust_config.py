"""Issue 21, config slice: presets swapped under the user, allocations sized by config, OS errors on write."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from recsys_lightning.config import group_options
from recsys_lightning.data import fetch, movielens
from recsys_lightning.errors import ConfigError, DataError
from recsys_lightning.memory_estimate import available_memory, check_memory, config_sizes, estimate
from recsys_lightning.presets import preset_keys, preset_pins
from recsys_lightning.runs.atomic import WriteFailed, check_writable_folder
from recsys_lightning.runs.checkpoint_io import AtomicCheckpointIO
from recsys_lightning.validation import check_training_config

from helpers import ROOT, run_module, training_config


def refusal(*overrides: str) -> str:
    """check_training_config's one line for a config composed as the entry point composes it (Hydra's
    record of the choices and typed overrides included)."""
    with pytest.raises(ConfigError) as error:
        check_training_config(training_config(*overrides, return_hydra_config=True))
    return str(error.value)


# -- presets: a swapped model, loss, sampler or optimizer ------------------------------------------------


def test_a_preset_key_the_swapped_model_does_not_take_names_the_preset():
    assert refusal("experiment=ml100k_ncf", "model=mf") == (
        "experiment=ml100k_ncf sets model.dropout, which model=mf does not take: model=mf replaced the preset's model=ncf; "
        "use the preset's model (drop model=) or drop experiment="
    )


def test_the_same_for_a_preset_that_sets_features_and_a_model_without_them():
    assert refusal("experiment=ml100k_cold_items", "model=popularity").startswith(
        "experiment=ml100k_cold_items sets model.features, which model=popularity does not take"
    )


def test_a_swapped_loss_is_refused_instead_of_training_with_the_other_loss_tuned_values():
    assert refusal("experiment=ml100k_ratings", "loss=bpr") == (
        "experiment=ml100k_ratings is tuned for loss=mse, and loss=bpr would train with its tuned data.min_rating=null, "
        "data.batch_size=8192, model.dim=128, optimizer.lr=0.05, loss.l2=0.12, trainer.max_epochs=12; drop experiment= to train "
        "loss=bpr with its own defaults, or set each of those keys yourself, or use a preset tuned for it: experiment=ml100k_cold_items"
    )


@pytest.mark.parametrize(
    "overrides, pinned",
    [
        (["experiment=ml100k_mf", "model=hybrid"], "model=mf"),
        (["experiment=ml100k_mf", "sampler=popularity"], "sampler=uniform"),
        (["experiment=ml100k_mf", "optimizer=sparse_adagrad"], "optimizer=adam"),  # adagrad would take adam's tuned lr
        (["experiment=ml100k_ncf_mlp", "loss=bce"], "loss=bpr"),
        (["experiment=ml100k_hybrid", "loss=bpr"], "loss=full_softmax"),
    ],
)
def test_every_swapped_group_a_preset_tuned_for_is_refused(overrides, pinned):
    assert refusal(*overrides).startswith(f"{overrides[0]} is tuned for {pinned}, and {overrides[1]} would train with its tuned ")


def test_a_swap_with_every_tuned_key_set_by_hand_or_the_preset_own_choice_trains():
    typed = [f"{key}={'null' if value is None else value}" for key, value in preset_keys("ml100k_ratings").items()]
    swapped = training_config("experiment=ml100k_ratings", "loss=bpr", *typed, return_hydra_config=True)
    check_training_config(swapped)  # raises ConfigError if refused
    assert swapped.loss._target_.endswith(".BPRLoss") and swapped.model.dim == preset_keys("ml100k_ratings")["model.dim"]
    # one tuned key left to the preset is enough to refuse the swap
    assert refusal("experiment=ml100k_ratings", "loss=bpr", *typed[1:]).startswith("experiment=ml100k_ratings is tuned for loss=mse")
    own_choices = training_config("experiment=ml100k_mf", "model=mf", "loss=full_softmax", return_hydra_config=True)
    check_training_config(own_choices)
    assert own_choices.loss._target_.endswith(".FullSoftmaxLoss") and own_choices.loss.l2 == pytest.approx(0.1)  # the preset's tuning


@pytest.mark.parametrize("preset", sorted(group_options("experiment")))
@pytest.mark.parametrize("group, option", [("model", "hybrid"), ("model", "mf"), ("loss", "bce"), ("sampler", "popularity")])
def test_no_preset_silently_trains_a_swapped_choice_with_its_tuned_keys(preset, group, option):
    """Every preset, each group swapped: either the choice is the preset's own, or the run is refused."""
    overrides = [f"experiment={preset}", f"{group}={option}"]
    if preset_pins(preset)[group] == option:
        return
    assert f"experiment={preset}" in refusal(*overrides)


@pytest.mark.slow
def test_the_entry_point_refuses_a_swapped_loss_in_one_line(tmp_path):
    result = run_module("recsys_lightning.train", "experiment=ml100k_ratings", "loss=bpr", f"paths.output_dir={tmp_path}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: " + refusal("experiment=ml100k_ratings", "loss=bpr"),
    ]


# -- OS errors on write: one line naming the path and what to do, nothing half-written ---------------------


def test_a_checkpoint_over_the_file_size_limit_is_one_line_and_leaves_no_file(tmp_path):
    """A real EFBIG: the soft RLIMIT_FSIZE lowered in this process (Python ignores SIGXFSZ, so the write
    fails instead of the process dying) while the plugin writes a checkpoint bigger than the limit."""
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    path.write_bytes(b"the previous checkpoint")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        with pytest.raises(WriteFailed) as error:
            AtomicCheckpointIO().save_checkpoint({"weights": torch.zeros(1_000_000)}, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert str(error.value) == (
        f"{path}: cannot write (File too large); the file-size limit (ulimit -f) is below its size: "
        "raise it (ulimit -f unlimited) and run again"
    )
    assert path.read_bytes() == b"the previous checkpoint"
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


@pytest.mark.slow
def test_training_under_a_file_size_limit_ends_in_one_line_naming_the_checkpoint(tmp_path):
    """Through the entry point, as `ulimit -f 976` in a shell would (SIGXFSZ ignored, as Python does)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))  # the events and logs fit, a 2 MB checkpoint does not

    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "recsys_lightning.train", "debug=quick", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, preexec_fn=limit, timeout=600)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {run_dir}/checkpoints/epoch000.ckpt: cannot write (File too large); the file-size limit (ulimit -f) is below "
        "its size: raise it (ulimit -f unlimited) and run again"
    ]
    assert list((run_dir / "checkpoints").iterdir()) == []  # no temporary, no truncated checkpoint
    assert not (run_dir / "metrics.json").exists()


def _unwritable(monkeypatch, folder: Path) -> None:
    """Writing in `folder` fails as it does for a user without permission there (root writes anyway)."""
    real = tempfile.TemporaryFile

    def refuse(*args, dir=None, **kwargs):  # noqa: A002 (tempfile's own name)
        if dir is not None and Path(dir) == folder:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)


def test_a_run_folder_under_a_folder_nobody_can_write_is_one_line(tmp_path, monkeypatch):
    _unwritable(monkeypatch, tmp_path)
    with pytest.raises(WriteFailed) as error:
        check_writable_folder(tmp_path / "runs" / "today", "hydra.run.dir")
    assert str(error.value) == (
        f"hydra.run.dir={tmp_path}/runs/today: cannot write in {tmp_path} (Permission denied); "
        "permission denied: point the path at a folder you can write"
    )
    assert list(tmp_path.iterdir()) == []  # the probe creates nothing


def _sysfs_takes_files() -> bool:
    try:
        with tempfile.TemporaryFile(dir="/sys"):
            return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/sys").is_dir() or ("/sys", os.W_OK) and _sysfs_takes_files(), reason="this machine lets the user write in /sys"
)
def test_the_entry_point_refuses_a_run_folder_it_cannot_create(tmp_path):
    """A real refusal, even for root: sysfs takes no new files."""
    result = run_module("recsys_lightning.train", "debug=quick", "hydra.run.dir=/sys/recsys_run")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: hydra.run.dir=/sys/recsys_run: cannot write in /sys (Permission denied); "
        "permission denied: point the path at a folder you can write"
    ]


def test_an_unwritable_data_dir_is_one_line_before_any_download(tmp_path, monkeypatch):
    _unwritable(monkeypatch, tmp_path)

    def no_download(*args) -> None:
        raise AssertionError("nothing may be fetched into a folder that cannot be written")

    monkeypatch.setattr(fetch, "_download_grouplens_zip", no_download)
    with pytest.raises(DataError) as error:
        movielens.resolve_movielens(tmp_path / "data", pip_download=no_download)
    assert str(error.value) == (
        f"paths.data_dir={tmp_path}/data: cannot write in {tmp_path} (Permission denied); MovieLens-100K is not there yet and is "
        "fetched into it: set RECSYS_DATA_DIR (or paths.data_dir) to a folder you can write, or put the ml-100k folder there"
    )


# -- memory: estimated before anything is allocated, refused with the estimate ----------------------------


def memory_refusal(overrides: list[str], users: int = 943, items: int = 1682) -> str:
    """check_memory's line under a fixed 8 GiB budget (memory_limit_gib), so the figures do not depend on this machine."""
    with pytest.raises(ConfigError) as error:
        check_memory(training_config(*overrides, "memory_limit_gib=8"), users, items)
    return str(error.value)


def test_a_wide_embedding_is_refused_with_the_estimate_and_the_key_to_lower():
    assert memory_refusal(["model.dim=65536"]) == (
        "model.dim=65536 with 1682 items and 943 users needs about 11.0 GiB (8.0 GiB for a training step's activations), "
        "memory_limit_gib allows 8.0 GiB available; lower model.dim (default 64), or set memory_limit_gib=<GiB> if the "
        "estimate is wrong here (0 skips the check)"
    )


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["sampler.num_negatives=1000000"], "sampler.num_negatives=1000000"),
        (["sampler=retrieved", "sampler.candidates=100000000"], "sampler.candidates=100000000"),
        (["sampler=hard", "sampler.candidates=1000000"], "sampler.candidates=1000000"),
        (["model=hybrid", "model.hidden=[65536,65536]"], "model.hidden=[65536,65536]"),
        (["model=ncf", "model.mlp_dim=65536"], "model.mlp_dim=65536"),
        (["data.batch_size=10000000"], "data.batch_size=10000000"),
        (["model=ease", "model.max_items=1000000"], "data.num_items"),
    ],
)
def test_every_allocation_a_config_sizes_is_refused_naming_its_key(overrides, key):
    items = 100_000 if "model=ease" in overrides else 1682
    message = memory_refusal(overrides, items=items)
    assert message.startswith(f"{key} with {items} items and 943 users needs about " if "=" in key else "this config with "), message
    assert "memory_limit_gib allows 8.0 GiB available; lower " in message


def test_what_config_alone_sizes_is_refused_before_the_data_is_loaded():
    assert memory_refusal(["sampler.num_negatives=1000000"], users=0, items=0).startswith(
        "sampler.num_negatives=1000000, before the data is counted, needs about 4120.3 GiB"
    )


def test_the_estimate_adds_up_the_documented_components():
    cfg = training_config()  # MF dim 64 with biases, Adam (weight, gradient, two moments), BPR, uniform, batch 4096
    components = {component.what: component.bytes for component in estimate(cfg, 943, 1682)}
    assert components["embeddings and Adam state"] == (943 + 1682) * 65 * 4 * 4
    assert components["a training step's activations"] == 4096 * 2 * 65 * 4 * 4 + 4096 * 2 * 8 * 5
    assert components["an evaluation chunk"] == 1024 * 1682 * 4 * 3
    sparse = training_config("optimizer=sparse_adam")  # no dense gradient: weight and two moments
    assert {c.what: c.bytes for c in estimate(sparse, 943, 1682)}["embeddings and SparseAdam state"] == (943 + 1682) * 65 * 4 * 3
    retrieved = training_config("sampler=retrieved", "sampler.candidates=500")
    assert {c.what: c.bytes for c in estimate(retrieved, 943, 1682)}["the retrieved candidates"] == 943 * 500 * 8


def test_the_default_run_fits_and_memory_limit_gib_0_turns_the_check_off():
    check_memory(training_config("memory_limit_gib=1"), 943, 1682)  # about 0.5 GiB
    check_memory(training_config("model.dim=65536", "memory_limit_gib=0"), 943, 1682)
    assert 0 < available_memory() < 2**62


@pytest.mark.slow
def test_the_entry_point_refuses_a_wide_model_before_building_it(tmp_path):
    """A step's activations alone exceed the budget: refused from the config, before the data loads."""
    result = run_module("recsys_lightning.train", "model.dim=65536", "memory_limit_gib=4", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: model.dim=65536, before the data is counted, needs about 8.5 GiB (8.0 GiB for a training step's activations), "
        "memory_limit_gib allows 4.0 GiB available; lower model.dim (default 64), or set memory_limit_gib=<GiB> if the "
        "estimate is wrong here (0 skips the check)"
    ]
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "size, component",
    [
        ("data.num_users=1000000000", "embeddings and Adam state"),
        ("data.num_items=100000000", "embeddings and Adam state"),
        ("data.num_interactions=2000000000", "the generated interactions"),
    ],
)
def test_synthetic_sizes_are_refused_from_the_config_before_anything_is_generated(size, component):
    cfg = training_config("data=synthetic", size, "memory_limit_gib=8")
    with pytest.raises(ConfigError) as error:
        check_memory(cfg, *config_sizes(cfg))
    assert str(error.value).startswith(f"{size} with ")
    assert f"GiB for {component}), memory_limit_gib allows 8.0 GiB available; lower {size.split('=')[0]} (default " in str(error.value)
