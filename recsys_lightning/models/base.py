"""The scoring contract every model implements; training and evaluation only talk to it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import Tensor, nn

from recsys_lightning.errors import RecsysError


class HeldRows(Protocol):
    """A table held outside the model (trainer=sharded's TorchRec tables): it gathers its own rows."""

    def gather(self, index: Tensor) -> Tensor: ...


class Recommender(nn.Module, ABC):
    """Scores users against items: pairs for training, the whole catalogue for ranking."""

    def __init__(self, num_users: int, num_items: int, sparse_gradients: bool = False) -> None:
        super().__init__()
        self.num_users = num_users
        self.num_items = num_items
        self.sparse_gradients = sparse_gradients

    def rows(self, table: Tensor | HeldRows, index: Tensor) -> Tensor:
        """`table[index]`, with a sparse gradient when `sparse_gradients` is set; a table held elsewhere
        gathers its own rows, so the same model code trains on one process and on sharded tables."""
        if isinstance(table, Tensor):
            return gather_rows(table, index, self.sparse_gradients)
        return table.gather(index)

    @abstractmethod
    def row_tables(self) -> list[nn.Parameter]:
        """Parameters only ever read by row during training (embeddings, biases): the ones that get
        sparse gradients, so a sparse optimizer's cost per step follows the batch, not the catalogue."""

    def shardable_tables(self) -> list[nn.Parameter]:
        """The tables trainer=sharded hands to TorchRec: the row tables, and side feature embeddings where a
        model has them (read by row too, though through a sparse product, so not among `row_tables`)."""
        return self.row_tables()

    @abstractmethod
    def score_with_penalty(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """Training call: scores of `users` [B] against `items` [B] or [B, N] (shaped like `items`), and
        the squared norm of the parameter rows they touched, per example.

        One call, so the embedding rows are gathered once for both. Regularising only the rows in the
        batch (as in the BPR paper) keeps rare items from being shrunk by steps they take no part in.
        """

    @abstractmethod
    def score_all(self, users: Tensor) -> Tensor:
        """Scores of `users` [B] against every item: [B, num_items], equal to `score` on the same pairs."""

    def score_items(self, users: Tensor, items: Tensor) -> Tensor:
        """Scores of `users` [U] against one list of `items` [N] shared by all of them: [U, N], equal to
        `score` on the same pairs. A shared negative pool is scored this way; models that score by a
        matrix product override this to touch only the pool's rows instead of the whole catalogue."""
        return self.score_all(users)[:, items]

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        """Scores of `users` [B] against `items` [B] or [B, N]."""
        return self.score_with_penalty(users, items)[0]

    def set_global_mean(self, mean: float) -> None:
        """Rating prediction: the mean training rating, for models that score around it (MF's mu + b_u + b_i
        + <p_u, q_i>); the others learn their own offset and ignore it."""

    def set_features(self, item_features: Tensor | None, user_features: Tensor | None, item_counts: Tensor, user_counts: Tensor) -> None:
        """Side features of the data, each side a sparse [entities, features] matrix of row means (models
        never read the data's own tables), and each item's and user's number of training interactions,
        for models built with `features` (MF); the others have no use for them."""

    def load_pretrained(self, sources: Sequence[Mapping[str, Tensor]]) -> None:
        """Copy in the weights of trained runs (`pretrained_from`), each source a checked part of this
        model's state dict (names and shapes match, no name in two sources). Models whose pre-trained
        parts need fusing (NeuMF's alpha) override this."""
        with torch.no_grad():
            state = self.state_dict()
            for source in sources:
                for name, value in source.items():
                    state[name].copy_(value)

    @abstractmethod
    def embedding_tables(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Named (user table, item table) pairs, the default for similarity and the projector first."""

    def item_vectors(self) -> Tensor | None:
        """[num_items, D] vectors with query_vectors(users) @ item_vectors().T == score_all(users), for
        models whose score is an inner product (so a vector index can serve them); else None."""
        return None

    def query_vectors(self, users: Tensor) -> Tensor:
        """[B, D] query vectors of `users`, the counterpart of `item_vectors`."""
        raise NotImplementedError(f"{type(self).__name__} does not score by an inner product")

    # Ranking against item rows given apart from the model: trainer=sharded scores each rank's rows of the item
    # tables (a row block) without the rest of them. `score_item_rows(ranking_queries(users), ranking_item_rows(
    # whole tables, every item))` equals `score_all(users)`; the models trainer=sharded trains implement them.

    def item_table_names(self) -> list[str]:
        """The row tables read per item when ranking (`item_factors`, ...), which `ranking_item_rows` combines."""
        raise NotImplementedError(f"{type(self).__name__} does not rank against item rows given apart")

    def ranking_item_rows(self, tables: Mapping[str, Tensor], items: Tensor) -> Tensor:
        """[N, D] rows `score_item_rows` scores against, from the same N rows of each of `item_table_names` by name,
        those of `items` [N] (which side features, when on, add theirs to)."""
        raise NotImplementedError(f"{type(self).__name__} does not rank against item rows given apart")

    def ranking_queries(self, users: Tensor) -> Tensor:
        """[B, Dq]: all `score_item_rows` needs of each of `users`, gathered once per chunk of users."""
        raise NotImplementedError(f"{type(self).__name__} does not rank against item rows given apart")

    def score_item_rows(self, queries: Tensor, item_rows: Tensor) -> Tensor:
        """[B, N] scores of the users of `queries` (`ranking_queries`) against the items of `item_rows`."""
        return queries @ item_rows.T

    def item_similarities(self, items: Tensor) -> Tensor | None:
        """[len(items), num_items] weights from `items` to every item, for models that hold an item-item
        matrix in place of embeddings (itemknn, ease), so serving can list similar items; else None."""
        return None


def build_recommender(config: Mapping[str, Any], num_users: int, num_items: int) -> Recommender:
    """The model `config` names, sized by the data. A user error its constructor raises (EASE's catalogue
    limit) comes out as itself, one line, not wrapped in Hydra's InstantiationException."""
    try:
        return instantiate(config, num_users=num_users, num_items=num_items)
    except InstantiationException as error:
        if isinstance(error.__cause__, RecsysError):
            raise error.__cause__ from None
        raise


def gather_rows(table: Tensor, index: Tensor, sparse: bool = False) -> Tensor:
    """`table[index]` for any index shape; `index_select` backpropagates faster than `nn.Embedding` on
    CPU, `F.embedding(sparse=True)` gives a sparse gradient that touches only the gathered rows."""
    if sparse:
        return F.embedding(index, table, sparse=True)
    return table.index_select(0, index.reshape(-1)).view(*index.shape, *table.shape[1:])
