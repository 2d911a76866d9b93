"""Embedding-based recommenders on implicit feedback, trained with Lightning and configured with Hydra."""

__version__ = "0.1.0"
