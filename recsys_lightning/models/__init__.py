"""nn.Modules that score (user, item) pairs; nothing here knows about data loading or training."""

from recsys_lightning.models.base import Recommender
from recsys_lightning.models.hybrid import HybridMF
from recsys_lightning.models.mf import MatrixFactorization
from recsys_lightning.models.ncf import NeuMF

__all__ = ["HybridMF", "MatrixFactorization", "NeuMF", "Recommender"]
