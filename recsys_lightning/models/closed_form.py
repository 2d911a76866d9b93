"""Models fitted in closed form from the binary training matrix X, with no gradient steps.

The module calls `fit` once, at the one step of a one-epoch run; validation, checkpoints and testing
then go as for any model. What `fit` computes lives in persistent buffers, so a checkpoint holds it
and `load_state_dict` restores it. A buffer whose size follows the data, such as X itself, is a
sparse tensor: its shape is fixed by the catalogue, its number of entries travels with it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from recsys_lightning.models.base import Recommender
from recsys_lightning.models.sparse import csr_kernels, empty_sparse, sparse_rows


class ClosedFormRecommender(Recommender):
    """A model fitted by `fit(X)` instead of an optimizer: no parameters, no training objective.

    `sparse_gradients` is accepted, and unused, so that optimizer=sparse_* (which sets it) still composes
    in a sweep over models.
    """

    @abstractmethod
    def fit(self, interactions: Tensor) -> None:
        """Fit from `interactions`: the [num_users, num_items] sparse COO matrix of training positives (values 1)."""

    def score_with_penalty(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        # Pairs serve a training objective, which a closed-form model does not have: read them off the full ranking.
        scores = self.score_all(users)
        return scores.gather(1, items.reshape(len(users), -1)).view_as(items), scores.new_zeros(())

    def row_tables(self) -> list[nn.Parameter]:
        return []

    def embedding_tables(self) -> dict[str, tuple[Tensor, Tensor]]:
        return {}


class ItemItemRecommender(ClosedFormRecommender):
    """score(u, .) = X_u W: each of the user's training items votes for items through an item-item matrix W.

    Scoring needs each user's training row, so X is kept, as the sparse buffer `user_items`; how W is
    held and applied is the subclass's.
    """

    def __init__(self, num_users: int, num_items: int, sparse_gradients: bool = False) -> None:
        super().__init__(num_users, num_items, sparse_gradients)
        self.register_buffer("user_items", empty_sparse(num_users, num_items, torch.bool))

    def fit(self, interactions: Tensor) -> None:
        interactions = interactions.coalesce()
        self.user_items = interactions.bool()
        self.fit_item_weights(interactions.float())

    @abstractmethod
    def fit_item_weights(self, interactions: Tensor) -> None:
        """Fit W from X, given as a coalesced float sparse matrix."""

    def history(self, users: Tensor) -> Tensor:
        """X_u of `users`: their training rows, a sparse float [len(users), num_items] matrix."""
        return sparse_rows(self.user_items, users)


def co_occurrence_blocks(interactions: Tensor, max_entries: int = 2**24) -> Iterator[tuple[Tensor, Tensor]]:
    """X^T X a block of rows at a time: (items, counts) with counts[r, j] the number of users holding both
    items[r] and j, dense, at most `max_entries` numbers per block (64 MiB), whatever the catalogue.

    Sparse times sparse costs the sum over users of their item count squared, not users x items^2.
    """
    num_items = interactions.shape[1]
    item_users = interactions.t().coalesce()
    block = max(1, max_entries // num_items)
    for start in range(0, num_items, block):
        items = torch.arange(start, min(start + block, num_items), device=interactions.device)
        with csr_kernels():
            co_counts = torch.sparse.mm(sparse_rows(item_users, items), interactions).to_dense()
        yield items, co_counts
