"""A misspelt config group or key on the command line is one line naming the closest one (issue 27), not
Hydra's advice to add the misspelt key with `+`."""

import pytest

from recsys_lightning.config import check_override_keys
from recsys_lightning.errors import ConfigError

from helpers import run_module


@pytest.mark.parametrize(
    ("arguments", "config_name", "message"),
    [
        (["modle=ncf"], "config", "modle=ncf: no config group or key 'modle'; did you mean model=ncf?"),
        (
            ["-m", "loss=bpr", "smapler=uniform,popularity"],
            "config",
            "smapler=uniform,popularity: no config group or key 'smapler'; did you mean sampler=uniform,popularity?",
        ),
        (["trainr.max_epochs=3"], "config", "trainr.max_epochs=3: no config group or key 'trainr'; did you mean trainer.max_epochs=3?"),
        (["sede=7"], "config", "sede=7: no config group or key 'sede'; did you mean seed=7?"),
        (
            ["run_dri=outputs/x", "user_id=1"],
            "recommend",
            "run_dri=outputs/x: no config group or key 'run_dri'; did you mean run_dir=outputs/x?",
        ),
    ],
)
def test_a_misspelt_group_or_key_names_the_closest(arguments, config_name, message):
    with pytest.raises(ConfigError) as error:
        check_override_keys(arguments, config_name)
    assert str(error.value) == message


def test_a_name_close_to_nothing_lists_the_names_and_how_to_add_a_key():
    with pytest.raises(ConfigError) as error:
        check_override_keys(["zzz=1"], "evaluate")
    assert str(error.value) == (
        "zzz=1: no config group or key 'zzz'; the groups and keys are accelerator, callbacks, candidates, checkpoint, hydra, retrieval, "
        "run_dir, runtime, split, tolerance; a key of your own is added with +zzz=1"
    )


@pytest.mark.parametrize(
    "arguments",
    [
        ["model=ncf", "model.dim=8", "hydra.run.dir=x", "hydra/launcher=slurm", "experiment=ml100k_mf", "debug=quick", "seed=1"],
        ["+modle=ncf", "~callbacks.early_stopping", "++trainer.max_epochs=1", "--cfg", "job", "-m", "paths.output_dir=/tmp/x=y"],
        ["--config-name=other", "modle=ncf"],  # another config's names are not these
    ],
)
def test_known_names_flags_and_additions_pass(arguments):
    check_override_keys(arguments, "config")


@pytest.mark.slow
def test_the_entry_point_answers_a_typo_in_one_line_and_exit_1():
    result = run_module("recsys_lightning.train", "modle=ncf")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: modle=ncf: no config group or key 'modle'; did you mean model=ncf?"]


@pytest.mark.parametrize(
    ("arguments", "config_name", "message"),
    [
        (["data=prepared", "data.pth=/p"], "config", "data.pth=/p: data=prepared has no key 'pth'; did you mean data.path=/p?"),
        (["data.data_dri=/d"], "prepare", "data.data_dri=/d: data=movielens has no key 'data_dri'; did you mean data.data_dir=/d?"),
        (
            ["data.split_ratio=[1]"],
            "config",
            "data.split_ratio=[1]: data=movielens has no key 'split_ratio'; did you mean data.split_ratios=[1]?",
        ),
        (
            ["-m", "data=csv,prepared", "data.split=temporal"],
            "config",
            "data.split=temporal: data=prepared has no key 'split'; "
            "its keys are _target_, batch_size, eval_chunk_size, eval_max_scores, path, seed, val_users",
        ),
        (
            ["trainer=ddp", "trainer.devics=2"],
            "config",
            "trainer.devics=2: trainer=ddp has no key 'devics'; did you mean trainer.devices=2?",
        ),
    ],
)
def test_a_key_the_chosen_option_lacks_names_the_closest_in_one_line(arguments, config_name, message):
    """Hydra answered `data.pth=...` over several lines with advice to append it (`+data.pth`)."""
    with pytest.raises(ConfigError) as error:
        check_override_keys(arguments, config_name)
    assert str(error.value) == message


@pytest.mark.parametrize(
    "arguments",
    [
        ["data=prepared", "data.path=/p", "data.val_users=5", "data.batch_size=auto"],
        ["data=csv", "data.split=cold_items", "data.split_ratios=[0.8,0.1,0.1]", "trainer=ddp", "trainer.max_epochs=1"],
        ["experiment=ml100k_mf", "data.anything=1"],  # an experiment may pick other options: left to Hydra
        ["optimizer=sparse_adam", "optimizer.lr=0.01", "model.sparse_gradients=true"],  # a _global_ option's keys sit elsewhere
        ["data=nosuch", "data.pth=1", "callbacks.early_stopping.patience=3", "model.dim=8"],
    ],
)
def test_keys_the_chosen_options_hold_pass(arguments):
    check_override_keys(arguments, "config")
