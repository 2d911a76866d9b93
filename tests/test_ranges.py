"""A key's range is declared once, on the constructor parameter it rules, and read from there by the
up-front check and by the check of a config read back from disk: a new class needs no edit elsewhere."""

from __future__ import annotations

import ast
from typing import Annotated

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from recsys_lightning.config import group_options
from recsys_lightning.errors import ConfigError
from recsys_lightning.losses import BPRLoss
from recsys_lightning.models import MatrixFactorization
from recsys_lightning.ranges import FLAG, MAX_WIDTH, POSITIVE, TEXT, Range, constructor_rules, shown_path
from recsys_lightning.runs.safe_config import checked_component
from recsys_lightning.samplers import UniformSampler
from recsys_lightning.validation import TRAINING_RULES, check_training_config

from helpers import ROOT, all_options, training_config


class ToyModel(MatrixFactorization):
    """A model a user adds: nothing in validation.py or safe_config.py names it or its keys."""

    def __init__(self, num_users: int, num_items: int, width: Annotated[int, Range(1, 8)] = 4) -> None:
        super().__init__(num_users, num_items, dim=width)


class ToyLoss(BPRLoss):
    def __init__(self, l2: float = 0.0, margin: Annotated[float, Range(0, 1)] = 0.5) -> None:
        super().__init__(l2)
        self.margin = margin


class ToySampler(UniformSampler):
    def __init__(self, num_negatives: Annotated[int, Range(1)] = 1, tries: Annotated[int | None, Range(1, 3)] = None) -> None:
        super().__init__(num_negatives)
        self.tries = tries


TOYS = {
    "model": (ToyModel, "width", 9, "model.width=9: must be an integer in [1, 8]", 8),
    "loss": (ToyLoss, "margin", 1.5, "loss.margin=1.5: must be a number in [0, 1]", 0.25),
    "sampler": (ToySampler, "tries", 0, "sampler.tries=0: must be an integer in [1, 3] or null", None),
}


@pytest.mark.parametrize("group", sorted(TOYS))
def test_a_new_class_that_declares_a_range_is_checked_with_no_edit_to_validation(group):
    toy, key, bad, message, good = TOYS[group]
    cfg = training_config()
    OmegaConf.update(cfg, group, {"_target_": f"{toy.__module__}.{toy.__name__}", key: bad}, merge=False)
    with pytest.raises(ConfigError) as caught:
        check_training_config(cfg)
    assert str(caught.value) == message
    OmegaConf.update(cfg, f"{group}.{key}", good)
    check_training_config(cfg)


def test_the_annotated_type_says_integer_and_null():
    rules = constructor_rules(f"{ToySampler.__module__}.ToySampler")
    assert str(rules["tries"]) == "an integer in [1, 3] or null"
    assert [rules["tries"].accepts(value) for value in (None, 1, 3, 4, 2.0, True)] == [True, True, True, False, False, False]
    assert str(constructor_rules(f"{ToyLoss.__module__}.ToyLoss")["margin"]) == "a number in [0, 1]"
    assert "l2" not in constructor_rules(f"{ToyLoss.__module__}.ToyLoss")  # not annotated: no rule of its own


def test_a_recorded_config_is_held_to_the_ranges_its_class_declares():
    model = {"_target_": "recsys_lightning.models.NeuMF", "gmf_dim": 8, "paths": ["gmf", "attention"]}
    with pytest.raises(ConfigError) as caught:
        checked_component("model", model, "x.ckpt")
    assert str(caught.value).startswith("x.ckpt: model.paths=['gmf', 'attention']: must be a non-empty list, each entry one of gmf, mlp")
    sampler = {"_target_": "recsys_lightning.samplers.UniformSampler", "num_negatives": 0}
    with pytest.raises(ConfigError, match=r"^x.ckpt: sampler.num_negatives=0: must be an integer >= 1; refusing to build it$"):
        checked_component("sampler", sampler, "x.ckpt")


# The keys validation.py's table held before their classes declared them (issue 23): each is still ruled.
DECLARED_ON_CONSTRUCTORS = {
    "data": "split split_ratios batch_size eval_chunk_size eval_max_scores val_users min_rating min_user_interactions "
    "min_item_interactions encoding on_overlap sep item_features user_features users_path feature_sep download_timeout "
    "num_users num_items num_interactions num_clusters popularity_exponent user_activity_exponent affinity",
    "model": "dim gmf_dim mlp_dim hidden dropout init_std bias zero_init_mlp paths pretrained_alpha features id_dropout "
    "num_item_features num_user_features sparse_gradients l2 max_items num_neighbours shrink",
    "loss": "l2 temperature log_q_correction",
    "sampler": "num_negatives candidates run_dir alpha max_rounds",
}


def test_every_key_the_old_table_ruled_is_declared_on_a_constructor():
    declared = {
        group: set().union(*(constructor_rules(option["_target_"]) for option in group_options(group).values()))
        for group in DECLARED_ON_CONSTRUCTORS
    }
    assert {group: set(keys.split()) - declared[group] for group, keys in DECLARED_ON_CONSTRUCTORS.items()} == dict.fromkeys(
        declared, set()
    )
    callbacks = training_config().callbacks
    assert str(constructor_rules(callbacks.nonfinite_loss_guard._target_)["check_every"]) == "an integer >= 1"
    assert str(constructor_rules(callbacks.progress_bar._target_)["refresh_rate"]) == "an integer >= 0"
    assert not [key for key in TRAINING_RULES if key.split(".")[0] in DECLARED_ON_CONSTRUCTORS]  # one rule per key


def test_the_rules_read_from_every_class_a_config_can_build():
    """A constructor of ours whose annotations do not resolve raises (a range would go unchecked), so reading
    every option's rules proves none is lost; the widths keep their checkpoint-safe bound."""
    for group, option in all_options():
        for target in _targets(group_options(group)[option]):
            constructor_rules(target)
    assert constructor_rules("recsys_lightning.models.MatrixFactorization")["dim"] == Range(1, MAX_WIDTH, integer=True)
    assert constructor_rules("recsys_lightning.models.MatrixFactorization")["init_std"] == POSITIVE
    assert constructor_rules("recsys_lightning.models.MatrixFactorization")["bias"] == FLAG
    assert str(constructor_rules("recsys_lightning.samplers.RetrievedSampler")["run_dir"]) == f"{TEXT} or null"


def _targets(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["_target_"]] if isinstance(node.get("_target_"), str) and "${" not in node["_target_"] else []
        return own + [target for value in node.values() for target in _targets(value)]
    return [target for value in node for target in _targets(value)] if isinstance(node, list) else []


def test_ranges_imports_nothing_of_the_project():
    """Any layer (data, models, serving) declares its ranges with it, so it must sit below them all."""
    tree = ast.parse((ROOT / "recsys_lightning" / "ranges.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not [name for name in imported if name and name.startswith("recsys_lightning")]
    assert get_class("recsys_lightning.ranges.Range") is Range


def test_a_long_path_is_shown_by_its_start_and_the_file_it_names():
    long = "/tmp/" + "deep/" * 60 + "recs.csv"
    assert shown_path("/tmp/out/recs.csv") == "/tmp/out/recs.csv"
    assert len(shown_path(long)) == 200 and shown_path(long).startswith("/tmp/deep/") and shown_path(long).endswith("/deep/recs.csv")
    assert "..." in shown_path(long) and len(shown_path(long, 30)) == 30
