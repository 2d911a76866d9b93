"""nn.Modules that score (user, item) pairs; nothing here knows about data loading or training."""

from recsys_lightning.models.base import Recommender
from recsys_lightning.models.closed_form import ClosedFormRecommender
from recsys_lightning.models.ease import EASE
from recsys_lightning.models.feature_popularity import FeaturePopularity
from recsys_lightning.models.hybrid import HybridMF
from recsys_lightning.models.itemknn import ItemKNN
from recsys_lightning.models.mf import MatrixFactorization
from recsys_lightning.models.ncf import NeuMF
from recsys_lightning.models.popularity import Popularity

__all__ = [
    "EASE",
    "ClosedFormRecommender",
    "FeaturePopularity",
    "HybridMF",
    "ItemKNN",
    "MatrixFactorization",
    "NeuMF",
    "Popularity",
    "Recommender",
]
