"""The classes a recorded config may build are listed in the package (runs/offered.py), so serving and
evaluating a run need no conf/; the list is exactly what the options of conf/<group>/ name."""

from collections.abc import Mapping

import pytest
from omegaconf import OmegaConf

from recsys_lightning import config
from recsys_lightning.errors import ConfigError
from recsys_lightning.rerank import RERANKER_TARGETS
from recsys_lightning.runs.offered import OFFERED_TARGETS
from recsys_lightning.runs.safe_config import checked_component

from helpers import CONF, ROOT


def targets_in(node) -> set[str]:
    """Every `_target_` at any depth of an option (a scheduler option nests its class under `scheduler:`)."""
    if isinstance(node, Mapping):
        found = {node["_target_"]} if isinstance(node.get("_target_"), str) else set()
        return found.union(*(targets_in(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(targets_in(value) for value in node))
    return set()


@pytest.mark.parametrize("group", sorted(OFFERED_TARGETS))
def test_the_listed_classes_are_exactly_those_conf_offers(group):
    named_in = {}
    for path in sorted((CONF / group).glob("*.yaml")):
        for target in targets_in(OmegaConf.to_container(OmegaConf.load(path), resolve=False)):
            named_in.setdefault(target, path.relative_to(ROOT))
    # A re-ranker is built only by train from the composed config; no recorded config may build it (serving
    # a re-ranker run is not offered yet: evaluate and recommend refuse its checkpoint).
    unlisted = sorted(set(named_in) - OFFERED_TARGETS[group] - RERANKER_TARGETS)
    assert not unlisted, (
        f"{named_in[unlisted[0]]} names {unlisted[0]}, which recsys_lightning/runs/offered.py does not list: add "
        f'"{unlisted[0]}" to OFFERED_TARGETS["{group}"], or a checkpoint of it cannot be served or evaluated'
    )
    stale = sorted(OFFERED_TARGETS[group] - set(named_in))
    assert not stale, f'OFFERED_TARGETS["{group}"] lists {stale[0]}, which no conf/{group}/*.yaml names: remove it'
    assert len(named_in) >= 2


def test_a_recorded_config_is_checked_without_conf(monkeypatch, tmp_path):
    """An installed package has no conf/ beside it: the check must not read it."""
    monkeypatch.setattr(config, "PROJECT_ROOT", tmp_path)
    config.group_options.cache_clear()
    try:
        model = {"_target_": "recsys_lightning.models.NeuMF", "gmf_dim": 8}
        assert checked_component("model", model, "run.ckpt") == model
        with pytest.raises(ConfigError, match=r"run.ckpt: model._target_ is 'os.system', which no conf/model/\*.yaml offers"):
            checked_component("model", {"_target_": "os.system"}, "run.ckpt")
        assert config.group_options.cache_info().currsize == 0
    finally:
        config.group_options.cache_clear()
