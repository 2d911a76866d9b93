"""Categorical item and user features, matched to the interactions' ids once, in the DataModule.

A source hands over the cells as its file spells them (`FeatureColumns`); `index_features` matches
their ids to the entity indices the interactions gave, so every model reads the same rows, and a cold
item (held out of training) still has its features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recsys_lightning.errors import DataError, quote

log = logging.getLogger(__name__)

_POSITION = "\x00position"  # a column name no file's feature column can take


@dataclass(frozen=True)
class FeatureTable:
    """Categorical features of one side (items or users): row r (the entity's index) -> its feature ids."""

    names: list[str]  # the vocabulary, "column=value" (e.g. "genre=Action", "year=1995"); position = feature id
    indptr: Tensor  # [num_entities + 1] int64, CSR row pointers
    indices: Tensor  # [nnz] int64 feature ids, sorted and distinct within a row

    @property
    def num_features(self) -> int:
        return len(self.names)

    @property
    def num_entities(self) -> int:
        return len(self.indptr) - 1

    def mean_matrix(self) -> Tensor:
        """Sparse COO float [num_entities, num_features], each row's entries 1 / (features in the row):
        multiplied by a feature embedding table it gives each entity the mean of its feature embeddings
        (rows without features are zero)."""
        counts = torch.diff(self.indptr)
        rows = torch.repeat_interleave(torch.arange(self.num_entities), counts)
        weights = 1.0 / counts[rows].float()
        size = (self.num_entities, self.num_features)
        # Rows ascend and ids are sorted and distinct within a row: already coalesced, so nothing is copied;
        # the invariants are still checked, since a table may come from a file (bounds, order).
        return torch.sparse_coo_tensor(torch.stack([rows, self.indices]), weights, size, is_coalesced=True, check_invariants=True)


@dataclass(frozen=True)
class FeatureColumns:
    """Feature cells as a file gave them: one row per file row, ids and values as text.

    Kept raw until the interactions are indexed, because only then is it known which ids exist and
    whether they were read as integers (`7` then matches item 7, `007` nothing).

    - `source`: the file, as messages name it
    - `ids`: each row's raw id text
    - `values`: one text column per feature, named as the vocabulary names it; "" = no value
    - `sep`: splits a cell into several values (`Action|Comedy`); None = one value per cell
    - `first_line`: the file line of row 0 (2 below a header), for messages
    """

    source: str
    ids: pd.Series
    values: pd.DataFrame
    sep: str | None
    first_line: int


def index_features(columns: FeatureColumns, entity_ids: np.ndarray, entity: str) -> FeatureTable:
    """Rows matched to `entity_ids` (the interactions' raw ids, in index order) by exact text.

    Entities the file does not list get no features and rows for ids the interactions lack are
    ignored: a catalogue file usually covers more or fewer items than one interaction log. Two rows
    of one entity with different cells are an error, since either choice would be a guess.
    """
    positions = pd.Index(entity_ids).astype(str).get_indexer(columns.ids.fillna("").astype(str))
    known = positions >= 0
    refuse_unmatched(columns.source, columns.ids, known, entity_ids, entity)
    lines = np.flatnonzero(known) + columns.first_line
    table = pd.DataFrame(
        {name: columns.values[name].fillna("").astype(str).to_numpy()[known] for name in columns.values.columns}, index=lines
    )
    table.insert(0, _POSITION, positions[known])
    distinct = table.drop_duplicates()
    _refuse_conflicts(distinct, columns, entity_ids, entity)
    distinct = distinct.set_index(_POSITION)

    names: list[str] = []
    rows, features = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for column in columns.values.columns:
        cells = distinct[column]
        values = (cells.str.split(columns.sep, regex=False).explode() if columns.sep else cells).str.strip()
        values = values[values != ""]
        vocabulary = pd.Index(values.unique()).sort_values()
        rows.append(values.index.to_numpy(np.int64))
        features.append(len(names) + vocabulary.get_indexer(values).astype(np.int64))
        names += [f"{column}={value}" for value in vocabulary]
    pairs = np.unique(np.stack([np.concatenate(rows), np.concatenate(features)], 1), axis=0)  # sorted by row, then feature
    indptr = np.zeros(len(entity_ids) + 1, np.int64)
    indptr[1:] = np.cumsum(np.bincount(pairs[:, 0], minlength=len(entity_ids)))
    with_features = int(np.count_nonzero(np.diff(indptr)))
    log.info(
        "%s features (%s) from %s: %d values; %d of %d %ss have some, %d have no row; %d rows of ids not in the interactions ignored",
        entity,
        ", ".join(map(str, columns.values.columns)),
        columns.source,
        len(names),
        with_features,
        len(entity_ids),
        entity,
        len(entity_ids) - distinct.index.nunique(),
        int(np.count_nonzero(~known)),
    )
    return FeatureTable(names=names, indptr=torch.from_numpy(indptr), indices=torch.from_numpy(pairs[:, 1].copy()))


def refuse_unmatched(source: str, file_ids: pd.Series, known: np.ndarray, entity_ids: np.ndarray, entity: str) -> None:
    """A file none of whose ids is an id of the interactions was written for other data (or another
    id column): one DataError showing an id of each side, instead of features or titles silently absent."""
    if known.any() or not len(entity_ids):
        return
    column = f" (column {quote(str(file_ids.name))})" if file_ids.name is not None else ""
    example = f"e.g. {quote(str(file_ids.iloc[0]))}" if len(file_ids) else "it has no rows"
    article = "an" if entity == "item" else "a"
    raise DataError(
        f"{source}: none of its {entity} ids{column} is {article} {entity} id of the interactions ({example}; the interactions "
        f"have e.g. {quote(entity_ids[0])}); point data.{entity}s_path at the file for these interactions, set "
        f"data.{entity}_col to the column they share, or write the ids as the interactions do (7 and 007 differ)"
    )


def _refuse_conflicts(distinct: pd.DataFrame, columns: FeatureColumns, entity_ids: np.ndarray, entity: str) -> None:
    """One DataError for the first entity listed twice with different cells, naming both lines and a cell that differs."""
    again = distinct[_POSITION].duplicated().to_numpy()
    if not again.any():
        return
    repeat = int(np.argmax(again))
    position = distinct[_POSITION].iloc[repeat]
    first = int(np.argmax(distinct[_POSITION].to_numpy() == position))
    before, after = distinct.iloc[first], distinct.iloc[repeat]
    column = next(name for name in columns.values.columns if before[name] != after[name])
    several = f", several values in one cell separated by {columns.sep!r}" if columns.sep else ""
    raise DataError(
        f"{columns.source}: line {distinct.index[repeat]}: {entity} {quote(entity_ids[position])} is listed again (first on line "
        f"{distinct.index[first]}) with another {column!r} ({quote(after[column])}, before {quote(before[column])}); "
        f"keep one row per {entity}{several}"
    )
