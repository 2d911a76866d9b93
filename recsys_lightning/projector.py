"""Item embeddings in TensorBoard's projector, labelled with ids, titles and popularity."""

from __future__ import annotations

import logging

import torch

from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.models.base import Recommender

METADATA_HEADER = ["item_id", "title", "popularity"]
log = logging.getLogger(__name__)


def log_item_embeddings(writer, model: Recommender, catalogue: Catalogue, max_items: int, step: int) -> None:
    """Log the `max_items` most popular items' vectors of the model's first embedding table.

    Capped because the projector loads everything into the browser: a few thousand points stay
    interactive, a million do not. A model without embeddings (popularity, itemknn, ease) has nothing to show.
    """
    tables = model.embedding_tables()
    if not tables:
        log.info("projector: %s has no item embeddings, nothing to export", type(model).__name__)
        return
    name, (_, item_table) = next(iter(tables.items()))
    if not isinstance(item_table, torch.Tensor):  # gathering its rows would be a collective, and rank 0 logs alone
        log.info("projector: the item table is split over the ranks (trainer=sharded), nothing to export")
        return
    order = torch.argsort(catalogue.popularity.cpu(), descending=True, stable=True)[:max_items]
    titles = catalogue.title_of(order.tolist())
    metadata = [
        [_cell(catalogue.item_ids[item]), _cell(title), str(int(catalogue.popularity[item]))] for item, title in zip(order.tolist(), titles)
    ]
    writer.add_embedding(
        item_table.detach().cpu()[order], metadata=metadata, metadata_header=METADATA_HEADER, tag=f"items_{name}", global_step=step
    )


def _cell(value) -> str:
    """The metadata file is tab-separated, one row per line."""
    return str(value).replace("\t", " ").replace("\n", " ") or "-"
