"""Initialise a model from trained runs (`pretrained_from`): a warm start, or NeuMF's GMF + MLP pre-training.

The runs' checkpoints are untrusted files, read through runs/other_runs.py: only their tensors, never
their configs, and only from a run trained on exactly this data and split. A run on another split has
trained on some of this run's validation or test interactions, and its embeddings would carry them into
the metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import Tensor

from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.errors import ConfigError
from recsys_lightning.models.base import Recommender
from recsys_lightning.runs.other_runs import PRETRAINED_KEY, warm_start_weights

log = logging.getLogger(__name__)


def load_pretrained(model: Recommender, run_dirs: Sequence[str], catalogue: Catalogue) -> None:
    """Copy into `model` every weight of each run's best checkpoint that `model` has, by name and shape.

    A weight offered by two runs is refused (which one should win is not ours to guess), and so is a
    run that offers nothing this model has.
    """
    sources: list[dict[str, Tensor]] = []
    claimed: dict[str, str] = {}
    for run_dir in run_dirs:
        weights = warm_start_weights(run_dir, model, catalogue)
        for name in weights:
            if name in claimed:
                raise ConfigError(
                    f"{PRETRAINED_KEY}: model.{name} is in both {claimed[name]} and {run_dir}; list each part of the model once"
                )
            claimed[name] = str(run_dir)
        sources.append(weights)
        log.info("Initialised %d weights from %s: %s", len(weights), run_dir, ", ".join(sorted(weights)))
    model.load_pretrained(sources)
