"""Defaults that follow the data's size: `data.batch_size=auto` and `callbacks.early_stopping.patience=auto`.

A fixed batch of 4096 pairs gives a 5,000-pair CSV two optimizer steps per epoch, and a patience of 10
validations then ends the run after about 20 steps, before a model has learnt anything. The rules keep
what every data set of at least 10 x 4096 training pairs had (MovieLens-100K's main job and presets:
about 80,000 pairs, batch 4096, 20 steps per epoch, patience 10) and size smaller data so that an epoch
holds at least 10 steps and early stopping waits at least 100. Large data gets fewer validations of
patience: at 20M interactions an epoch is about 4,000 steps, and waiting 10 epochs for a model whose best
came at its first (as the README's synthetic example's did) costs half an hour; 3 epochs of millions of
pairs each without improvement are enough. A value the user sets always wins.
"""

from __future__ import annotations

import math

AUTO = "auto"
LARGEST_BATCH = 4096
SMALLEST_BATCH = 32
STEPS_PER_EPOCH = 10  # auto batch sizes give at least this many steps per epoch, down to SMALLEST_BATCH
PATIENCE = 10  # validations, when they hold enough steps
PATIENCE_STEPS = PATIENCE * STEPS_PER_EPOCH  # auto patience waits at least this many training steps
PATIENCE_MAX_STEPS = 10_000  # ... and, when validations are far apart, about this many (never below 3 validations)
SHORTEST_PATIENCE = 3


def auto_batch_size(training_pairs: int) -> int:
    """The largest power of two from 4096 down to 32 that gives `training_pairs` at least 10 steps per epoch."""
    batch = LARGEST_BATCH
    while batch > SMALLEST_BATCH and training_pairs < STEPS_PER_EPOCH * batch:
        batch //= 2
    return batch


def auto_patience(steps_per_validation: int) -> int:
    """10 validations, or more when they hold fewer than 100 training steps together (a large batch the
    user chose for small data): early stopping then waits 100 steps, never 20; or fewer, down to 3, when 10
    hold more than 10,000 steps (large data): then it waits about 10,000."""
    steps = max(1, steps_per_validation)
    if PATIENCE * steps > PATIENCE_MAX_STEPS:
        return max(SHORTEST_PATIENCE, math.ceil(PATIENCE_MAX_STEPS / steps))
    return max(PATIENCE, math.ceil(PATIENCE_STEPS / steps))
