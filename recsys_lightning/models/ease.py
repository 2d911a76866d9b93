"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): a dense item-item
regression with a zero diagonal, fitted in closed form."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from recsys_lightning.errors import ConfigError
from recsys_lightning.models.closed_form import ItemItemRecommender, co_occurrence_blocks
from recsys_lightning.models.sparse import csr_kernels
from recsys_lightning.ranges import FLAG, POSITIVE, Range

BYTES_PER_WEIGHT = 4  # float32


class EASE(ItemItemRecommender):
    """score(u, .) = X_u B with B = argmin ||X - X B||^2 + l2 ||B||^2 subject to diag(B) = 0.

    Closed form (eq. 8 of the paper): P = (X^T X + l2 I)^-1, B_ij = -P_ij / P_jj, B_jj = 0. B is a dense
    num_items^2 matrix, so a catalogue above `max_items` is refused before anything is allocated.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        l2: Annotated[float, POSITIVE] = 300.0,
        max_items: Annotated[int, Range(1)] = 50_000,
        sparse_gradients: Annotated[bool, FLAG] = False,
    ) -> None:
        if num_items > max_items:
            gib = num_items**2 * BYTES_PER_WEIGHT / 2**30
            raise ConfigError(
                f"model=ease: {num_items} items need a dense {num_items} x {num_items} item-item matrix ({gib:.1f} GiB, about "
                f"three times that while fitting), above model.max_items={max_items}; raise model.max_items if this machine has "
                "the memory, drop rare items (data.min_item_interactions), or use model=itemknn"
            )
        super().__init__(num_users, num_items, sparse_gradients)
        self.l2 = l2
        self.register_buffer("item_weights", torch.zeros(num_items, num_items))

    def fit_item_weights(self, interactions: Tensor) -> None:
        gram = self.item_weights  # X^T X is built in B's own memory: one num_items^2 matrix fewer at the peak
        for items, co_counts in co_occurrence_blocks(interactions):
            gram[items] = co_counts
        gram.diagonal().add_(self.l2)
        # X^T X + l2 I is symmetric positive definite, yet a plain inverse: torch.cholesky_inverse is 10x slower on the CPU.
        try:
            precision = torch.linalg.inv(gram)
        except torch.linalg.LinAlgError as error:
            raise ConfigError(f"model=ease: X^T X + l2 I cannot be inverted in float32 at l2={self.l2}; raise model.l2") from error
        self.item_weights = precision.div_(-precision.diagonal())  # column j divided by -P_jj
        self.item_weights.diagonal().zero_()

    def score_all(self, users: Tensor) -> Tensor:
        with csr_kernels():  # on the CPU, CSR times dense is 6x faster than COO times dense
            return self.history(users).to_sparse_csr() @ self.item_weights

    def item_similarities(self, items: Tensor) -> Tensor:
        return self.item_weights[items]
