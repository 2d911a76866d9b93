"""Entry point: load and split any data source once, and write it as user-sharded Parquet parts.

    python -m recsys_lightning.prepare data=movielens output=prepared/ml100k parts=4

The data is split with the rules and seed training uses, so a prepared folder holds exactly the split
`data=<source>` trains on. It is read `chunk_rows` rows at a time and split one block of users at a time
(prepared/bounded.py), so memory follows the chunk and the id maps, not the rows: pre-split files too (each
row's file gives its part), and k-core filtering is found in passes over the rows (data/chunked_k_core.py).
`data=prepared data.path=<folder>` then lets each DDP rank read only its parts.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from recsys_lightning.build import build_datamodule
from recsys_lightning.config import check_override_keys, register_resolvers
from recsys_lightning.console import quiet_library_noise
from recsys_lightning.data.datamodule import InteractionDataModule
from recsys_lightning.errors import ConfigError, RecsysError, exit_with_message
from recsys_lightning.prepared.bounded import write_prepared_bounded
from recsys_lightning.prepared.datamodule import PREPARED_TARGET
from recsys_lightning.prepared.write import check_output_free
from recsys_lightning.ranges import TEXT, Rule, constructor_rules, integer, shown
from recsys_lightning.runs.atomic import check_writable_folder
from recsys_lightning.threads import apply_thread_count
from recsys_lightning.validation import check_known_keys, check_rules

log = logging.getLogger(__name__)
register_resolvers()
quiet_library_noise()

# prepare's own arguments (conf/prepare.yaml); the data keys are ruled by the data option's constructor.
PREPARE_RULES: dict[str, Rule] = {"seed": integer(0, 2**32 - 1), "output": TEXT, "parts": integer(1), "chunk_rows": integer(16)}
FEATURE_KEYS = ("item_features", "user_features")


def check_prepare_config(cfg: DictConfig) -> None:
    """Everything checkable before the data loads: a refused call costs no reading."""
    if OmegaConf.is_missing(cfg, "output") or not cfg.output:
        raise ConfigError("output is not set: set output=<a new folder>, e.g. output=prepared/ml100k")
    check_rules(cfg, PREPARE_RULES)
    if cfg.data.get("_target_") == PREPARED_TARGET:
        raise ConfigError(
            "data=prepared: prepare reads a data source (data=movielens|csv|synthetic), not a prepared folder; "
            "to cut the data into other parts, prepare the source again with parts=N"
        )
    check_known_keys(cfg)  # data.<key> the data option does not take: one line, not instantiate's TypeError
    check_rules(cfg, {f"data.{name}": rule for name, rule in constructor_rules(cfg.data._target_).items()})
    for key in FEATURE_KEYS:
        if cfg.data.get(key):
            raise ConfigError(f"data.{key}={list(cfg.data[key])}: prepare does not write side features yet; set data.{key}=[]")
    if cfg.data.get("eval_candidates", "all") != "all":  # its default here; another value would be ignored unsaid
        raise ConfigError(
            f"data.eval_candidates={shown(cfg.data.eval_candidates)}: prepare ranks nothing, and a prepared folder is ranked "
            "whole (data=prepared has no cold_items split to rank new items of); drop it"
        )
    check_output_free(Path(cfg.output))
    check_writable_folder(cfg.output, "output")


def prepare(cfg: DictConfig) -> dict[str, Any]:
    """Load, split and write `cfg.data` to `cfg.output`; returns the manifest written."""
    check_prepare_config(cfg)
    datamodule: InteractionDataModule = build_datamodule(cfg.data)
    chunked = datamodule.load_chunks(cfg.chunk_rows)
    manifest = write_prepared_bounded(datamodule, chunked, Path(cfg.output), cfg.parts, cfg.chunk_rows)
    log.info("prepared %s into %s (%d parts)", manifest["source"], cfg.output, len(manifest["parts"]))
    return manifest


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    try:
        apply_thread_count(OmegaConf.select(cfg, "runtime.threads", default="auto"))
        prepare(cfg)
    except RecsysError as error:
        exit_with_message(error)


if __name__ == "__main__":
    try:
        check_override_keys(sys.argv[1:], "prepare")
    except ConfigError as error:
        exit_with_message(error)
    main()
