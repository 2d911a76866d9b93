"""`--help` of each entry point is this project's help: what it does, its options, where outputs go."""

import pytest

from helpers import options, run_module

pytestmark = pytest.mark.slow


def test_train_help_lists_groups_keys_and_outputs():
    result = run_module("recsys_lightning.train", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert text.startswith("python -m recsys_lightning.train")
    assert f"model: {', '.join(options('model'))}" in text  # the groups come from conf/, so they stay current
    assert "data: csv, movielens, prepared, synthetic\n" in text  # only options: the part they share is not one
    assert "== Keys users turn most ==" in text and "== Where outputs go ==" in text
    assert "Powered by Hydra" not in text


@pytest.mark.parametrize("entry, request_key", [("recommend", "user_id=42"), ("evaluate", "split=test|valid")])
def test_serving_entry_points_have_their_own_help(entry, request_key):
    result = run_module(f"recsys_lightning.{entry}", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"python -m recsys_lightning.{entry} run_dir=<training run>")
    assert request_key in result.stdout and f"conf/{entry}.yaml" in result.stdout
