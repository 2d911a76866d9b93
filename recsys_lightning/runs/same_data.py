"""Whether a checkpoint was trained on the data a run has now: the same raw ids, and the same training
pairs (so the same split: a run of another split has trained on some of this one's validation or test
interactions). Resume, evaluate, warm starts and two stages all compare through these two functions and
say in their own words what differs.
"""

from __future__ import annotations

import torch

from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.data.catalogue_reference import CatalogueReference
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.data.training_data import TrainingData


def same_ids(theirs: Catalogue, ours: Catalogue) -> bool:
    """The same raw user and item ids in the same order, so index i means the same user or item in both."""
    return theirs.user_ids.equals(ours.user_ids) and theirs.item_ids.equals(ours.item_ids)


def same_training_pairs(catalogue: Catalogue, train: UserItemCSR) -> bool:
    """Whether `catalogue`'s training part is exactly `train`: as many users and items, the same (user, item) pairs."""
    if (catalogue.num_users, catalogue.num_items) != (train.num_users, train.num_items):
        return False
    trained = catalogue.seen_in(["train"])
    train = train.to(trained.indptr.device)
    return torch.equal(trained.indptr.long(), train.indptr.long()) and torch.equal(trained.indices.long(), train.indices.long())


def same_training_data(catalogue: Catalogue | CatalogueReference, data: TrainingData) -> bool:
    """Whether a checkpoint's catalogue records the same users, items and training pairs as `data`; trained
    on several ranks of prepared data, whether both reference the same prepared data."""
    if isinstance(data.catalogue, CatalogueReference):
        return data.catalogue.same_data(catalogue)
    if isinstance(catalogue, CatalogueReference):
        return False
    return same_ids(catalogue, data.catalogue) and same_training_pairs(catalogue, data.positives.csr)
