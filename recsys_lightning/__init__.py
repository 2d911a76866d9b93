"""Embedding-based recommenders on implicit feedback, trained with Lightning and configured with Hydra."""

# First, before any entry point imports torch: OpenMP reads its wait policy and thread count once, when it loads.
from recsys_lightning.threads import prepare_environment

prepare_environment()

__version__ = "0.1.0"
