"""Issue 21, config slice: presets swapped under the user, allocations sized by config, OS errors on write."""

from __future__ import annotations

import pytest

from recsys_lightning.config import group_options
from recsys_lightning.errors import ConfigError
from recsys_lightning.presets import preset_keys, preset_pins
from recsys_lightning.validation import check_training_config

from helpers import run_module, training_config


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
    check_training_config(training_config("experiment=ml100k_ratings", "loss=bpr", *typed, return_hydra_config=True))
    check_training_config(training_config("experiment=ml100k_mf", "model=mf", "loss=full_softmax", return_hydra_config=True))


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
