"""Checkpoints and run folders are untrusted input: a crafted one must never run code, through any
entry point (recommend, evaluate, resume), and is refused with one line."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from recsys_lightning.config import register_resolvers
from recsys_lightning.errors import ConfigError
from recsys_lightning.evaluate import evaluate
from recsys_lightning.runs.checkpoint_file import FORMAT_KEY, FORMAT_VERSION, find_checkpoint
from recsys_lightning.runs.offered import offered_targets
from recsys_lightning.runs.run_folder import RunFolder
from recsys_lightning.runs.safe_config import checked_component, checked_module_hyper_parameters
from recsys_lightning.runs.trained_run import load_trained

from helpers import option_config, options, recommender_options, run_module, training_config

register_resolvers()


class TouchOnLoad:
    """Unpickling this creates `marker`: the stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "code-ran"


@pytest.fixture
def payload(tmp_path, marker) -> Path:
    """A full pickle that runs code when loaded with weights_only=False."""
    path = tmp_path / "payload.pt"
    torch.save(TouchOnLoad(marker), path)
    return path


def crafted_run(movielens_run: Path, tmp_path: Path, edit) -> Path:
    """A copy of a real run folder whose best checkpoint went through `edit(checkpoint)`."""
    run_dir = tmp_path / "crafted_run"
    shutil.copytree(movielens_run, run_dir, ignore=shutil.ignore_patterns("events.out.*", "0*"))
    path = find_checkpoint(run_dir)
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, path)
    return run_dir


def one_error_line(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1, result.stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return errors[0]


def nested_torch_load(payload: Path) -> dict:
    return {"_target_": "torch.load", "f": str(payload), "weights_only": False}


EDITS = {
    "nested target in a model argument": lambda p: lambda ckpt: ckpt["hyper_parameters"]["model"].update(bias=nested_torch_load(p)),
    "top-level target swapped": lambda p: lambda ckpt: ckpt["hyper_parameters"].update(model=nested_torch_load(p)),
    "hydra _args_ directive": lambda p: lambda ckpt: ckpt["hyper_parameters"]["model"].update(_args_=[nested_torch_load(p)]),
    "nested target in a list": lambda p: lambda ckpt: ckpt["hyper_parameters"]["model"].update(dim=[nested_torch_load(p)]),
    "nested target in the loss": lambda p: lambda ckpt: ckpt["hyper_parameters"]["loss"].update(l2=nested_torch_load(p)),
    "nested target in the scheduler": lambda p: (
        lambda ckpt: ckpt["hyper_parameters"].update(scheduler={"scheduler": nested_torch_load(p), "interval": "epoch"})
    ),
}


def refused_in_process(run_dir: Path) -> list[str]:
    """What recommend's and evaluate's own functions say about a run folder: each must refuse it."""
    messages = []
    for request in (lambda: load_trained(find_checkpoint(run_dir)), lambda: evaluate(run_dir, accelerator="cpu")):
        with pytest.raises(ConfigError) as error:
            request()
        messages.append(str(error.value))
    return messages


@pytest.mark.slow
@pytest.mark.parametrize("edit", list(EDITS))
def test_crafted_checkpoint_runs_no_code_in_recommend_or_evaluate(movielens_run, tmp_path, payload, marker, edit):
    run_dir = crafted_run(movielens_run, tmp_path, EDITS[edit](payload))
    for message in refused_in_process(run_dir):
        assert "refusing to build it" in message or "arguments read from disk" in message, message
    assert not marker.exists(), f"code from the checkpoint ran ({edit})"


@pytest.mark.slow
def test_crafted_checkpoint_is_one_line_through_both_entry_points(movielens_run, tmp_path, payload, marker):
    run_dir = crafted_run(movielens_run, tmp_path, EDITS["nested target in a model argument"](payload))
    for module, overrides in (("recsys_lightning.recommend", ["user_id=1"]), ("recsys_lightning.evaluate", [])):
        assert "nested mapping carrying a _target_" in one_error_line(run_module(module, f"run_dir={run_dir}", *overrides))
    assert not marker.exists()


@pytest.mark.slow
def test_checkpoint_with_a_pickled_object_is_refused_for_serving_and_resume(movielens_run, tmp_path, payload, marker):
    run_dir = crafted_run(movielens_run, tmp_path, lambda ckpt: ckpt.update(extra=TouchOnLoad(marker)))
    assert not marker.exists()
    line = one_error_line(run_module("recsys_lightning.recommend", f"run_dir={run_dir}", "user_id=1"))
    assert "refused, it holds pickled objects" in line
    resumed = run_module(
        "recsys_lightning.train",
        "trainer.max_epochs=4",
        f"hydra.run.dir={run_dir}",
        f"ckpt_path={find_checkpoint(run_dir)}",
        "callbacks.progress_bar.refresh_rate=0",
    )
    assert "refused, it holds pickled objects" in one_error_line(resumed)
    resumed = run_module(
        "recsys_lightning.train",
        "trainer.max_epochs=4",
        f"hydra.run.dir={tmp_path / 'fresh'}",
        f"ckpt_path={payload}",
        "callbacks.progress_bar.refresh_rate=0",
    )
    assert "refused, it holds pickled objects" in one_error_line(resumed)
    assert not marker.exists()


def crafted_run_config(movielens_run: Path, tmp_path: Path, payload: Path, where: str) -> Path:
    """A copy of a real run folder whose .hydra/config.yaml loads `payload` in its data config at `where`."""
    run_dir = crafted_run(movielens_run, tmp_path, lambda ckpt: None)
    config_path = run_dir / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    if where == "data argument":
        config["data"]["min_rating"] = nested_torch_load(payload)
    elif where == "data target":
        config["data"] = nested_torch_load(payload)
    else:
        config["data"]["split_ratios"] = [0.8, nested_torch_load(payload), 0.1]
    config_path.write_text(yaml.safe_dump(config))
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("where", ["data argument", "data target", "list element"])
def test_crafted_run_config_runs_no_code_in_evaluate(movielens_run, tmp_path, payload, marker, where):
    run_dir = crafted_run_config(movielens_run, tmp_path, payload, where)
    with pytest.raises(ConfigError) as error:
        evaluate(run_dir)
    assert str(run_dir / ".hydra" / "config.yaml") in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


@pytest.mark.slow
def test_crafted_run_config_is_one_line_through_evaluate(movielens_run, tmp_path, payload, marker):
    run_dir = crafted_run_config(movielens_run, tmp_path, payload, "data target")
    assert str(run_dir / ".hydra" / "config.yaml") in one_error_line(run_module("recsys_lightning.evaluate", f"run_dir={run_dir}"))
    assert not marker.exists()


@pytest.mark.slow
def test_malformed_checkpoints_are_refused_with_a_reason(movielens_run, tmp_path):
    run_dir = crafted_run(movielens_run, tmp_path, lambda ckpt: None)
    path = find_checkpoint(run_dir)
    cases = {
        "empty file (0 bytes)": b"",
        "not a readable checkpoint": path.read_bytes()[:5000],
        "no state_dict of tensors": None,
    }
    for expected, content in cases.items():
        if content is None:
            torch.save(torch.zeros(3), path)
        else:
            path.write_bytes(content)
        for message in refused_in_process(run_dir):
            assert expected in message, (expected, message)
    line = one_error_line(run_module("recsys_lightning.recommend", f"run_dir={run_dir}", "user_id=1"))
    assert "no state_dict of tensors" in line


FORMAT_EDITS = {
    "no format marker": lambda ckpt: ckpt.pop(FORMAT_KEY),
    f"format {FORMAT_VERSION + 1}": lambda ckpt: ckpt.update({FORMAT_KEY: FORMAT_VERSION + 1}),
    f"format '{FORMAT_VERSION}'": lambda ckpt: ckpt.update({FORMAT_KEY: str(FORMAT_VERSION)}),  # text, not the int
    "format True": lambda ckpt: ckpt.update({FORMAT_KEY: True}),  # True == 1 in Python: still not a format version
}


@pytest.mark.slow
@pytest.mark.parametrize("found", list(FORMAT_EDITS))
def test_a_checkpoint_of_another_format_is_refused_by_recommend_evaluate_and_resume(movielens_run, tmp_path, found):
    run_dir = crafted_run(movielens_run, tmp_path, FORMAT_EDITS[found])
    path = find_checkpoint(run_dir)
    expected = f"{path}: checkpoint has {found}, this code reads format {FORMAT_VERSION}; retrain the run or use the version"
    messages = refused_in_process(run_dir)
    for message in messages:
        assert message.startswith(expected), message
    assert messages[0] == f"{expected} of recsys_lightning that wrote it"  # recommend's, which it prints as is (next test)
    with pytest.raises(ConfigError) as resumed:
        RunFolder(run_dir).resume_checkpoint(str(path))
    assert str(resumed.value).startswith(f"ckpt_path={path}: {expected}"), str(resumed.value)


@pytest.mark.slow
def test_a_checkpoint_without_the_format_marker_is_one_line_when_served_or_resumed(movielens_run, tmp_path):
    run_dir = crafted_run(movielens_run, tmp_path, FORMAT_EDITS["no format marker"])
    line = one_error_line(run_module("recsys_lightning.recommend", f"run_dir={run_dir}", "user_id=1"))
    assert line == (
        f"error: {find_checkpoint(run_dir)}: checkpoint has no format marker, this code reads format {FORMAT_VERSION}; "
        "retrain the run or use the version of recsys_lightning that wrote it"
    )
    resumed = run_module(
        "recsys_lightning.train",
        "trainer.max_epochs=4",
        f"hydra.run.dir={tmp_path / 'fresh'}",
        f"ckpt_path={find_checkpoint(run_dir)}",
        "callbacks.progress_bar.refresh_rate=0",
    )
    assert f"checkpoint has no format marker, this code reads format {FORMAT_VERSION}" in one_error_line(resumed)


@pytest.mark.slow
def test_catalogue_of_another_version_is_refused(movielens_run, tmp_path):
    run_dir = crafted_run(movielens_run, tmp_path, lambda ckpt: ckpt["catalogue"].update(version=99))
    line = one_error_line(run_module("recsys_lightning.recommend", f"run_dir={run_dir}", "user_id=1"))
    assert "version 99" in line and "retrain" in line


@pytest.mark.parametrize("group", ["model", "loss", "sampler", "optimizer", "data", "scheduler"])
def test_every_option_the_configs_offer_passes_the_check(group):
    from omegaconf import OmegaConf

    # A re-ranker's checkpoint is refused by serving in one line of its own (tests/test_reranker.py).
    for option in recommender_options() if group == "model" else options(group):
        # data=prepared requires its path (???): nothing resolves without one
        cfg = training_config("data=prepared", "data.path=/prepared") if option == "prepared" else option_config(group, option)
        node = OmegaConf.to_container(cfg[group], resolve=True) if cfg.get(group) else None
        if group == "scheduler":
            if node:
                assert checked_component("scheduler", node["scheduler"], "test") == node["scheduler"]
        elif group != "data" or option != "csv":  # csv needs a path to resolve nothing else
            assert checked_component(group, node, "test") == node


def test_hyper_parameters_check_names_the_key_and_keeps_valid_values():
    hyper_parameters = {
        "num_users": 3,
        "num_items": 4,
        "model": {"_target_": "recsys_lightning.models.MatrixFactorization", "dim": 8},
        "loss": {"_target_": "recsys_lightning.losses.BPRLoss", "l2": 0.01},
        "sampler": {"_target_": "recsys_lightning.samplers.UniformSampler", "num_negatives": 1},
        "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01},
        "scheduler": None,
        "ks": [10],
        "seed": 1,
    }
    assert checked_module_hyper_parameters(hyper_parameters, "x.ckpt") == hyper_parameters
    for key, value, message in (
        ("num_users", True, "num_users is True, not an integer"),
        ("optimizer", {"_target_": "os.system", "command": "true"}, "optimizer._target_ is 'os.system'"),
        ("ks", [10, "${oc.env:HOME}"], "ks is '${oc.env:HOME}'"),
        ("model", {"_target_": "recsys_lightning.models.MatrixFactorization", "_recursive_": True}, "'_recursive_'"),
        ("evil", 1, "unknown keys ('evil')"),
        ("data", {"_target_": "recsys_lightning.data.csv.CsvDataModule"}, "unknown keys ('data')"),  # the module's, never a checkpoint's
        ("model", {"_target_": "recsys_lightning.models.MatrixFactorization", "_partial_": True}, "model._partial_ is True"),
        ("model", {"_target_": "recsys_lightning.models.MatrixFactorization", "num_users": 5}, "'num_users', which"),
        ("model", {"_target_": "recsys_lightning.models.MatrixFactorization", "evil_arg": 1}, "'evil_arg', which"),
        ("model", {"_target_": "recsys_lightning.models.MatrixFactorization", "dim": 10**12}, "dim=1000000000000: must be"),
        ("model", {"_target_": "recsys_lightning.models.MatrixFactorization", "dim": "64"}, "dim='64': must be"),
        ("optimizer", {"_target_": "torch.optim.Adam", "lr": 0.01}, "optimizer._partial_ is None"),
        ("optimizer", {"_target_": "torch.optim.Adam", "_partial_": True, "lr": -1.0}, "lr=-1.0: must be"),
    ):
        with pytest.raises(ConfigError, match="x.ckpt") as error:
            checked_module_hyper_parameters({**hyper_parameters, key: value}, "x.ckpt")
        assert message in str(error.value), str(error.value)
    assert "torch.load" not in offered_targets("model") and "recsys_lightning.models.NeuMF" in offered_targets("model")


def test_recorded_data_configs_are_held_to_the_training_rules():
    data = {"_target_": "recsys_lightning.data.csv.CsvDataModule", "path": "x.csv", "batch_size": 64}
    assert checked_component("data", data, "config.yaml") == data
    for key, value, message in (
        ("_partial_", True, "data._partial_ is True"),
        ("batch_size", 0, "batch_size=0: must be"),
        ("load_everything", True, "'load_everything', which"),
    ):
        with pytest.raises(ConfigError, match="config.yaml") as error:
            checked_component("data", {**data, key: value}, "config.yaml")
        assert message in str(error.value), str(error.value)


@pytest.mark.slow
def test_a_checkpoint_with_non_finite_weights_is_not_served(movielens_run, tmp_path):
    run_dir = crafted_run(movielens_run, tmp_path, lambda ckpt: ckpt["state_dict"]["model.item_factors"].fill_(float("nan")))
    line = one_error_line(run_module("recsys_lightning.recommend", f"run_dir={run_dir}", "user_id=1"))
    assert "model.item_factors holds NaN or infinite values" in line
