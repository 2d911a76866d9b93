"""nn.Modules that score (user, item) pairs; nothing here knows about data loading or training."""

from recsys_lightning.models.base import Recommender
from recsys_lightning.models.mf import MatrixFactorization

__all__ = ["MatrixFactorization", "Recommender"]
