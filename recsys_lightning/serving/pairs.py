"""Scores of given (user, item) pairs: one pair from the command line, or a file of pairs a chunk at a time.

A run trained with a loss that predicts ratings (`predicts_ratings`, e.g. mse) scores a pair with its
predicted rating, and the answer says so; any other model's score only orders items for one user.
Each chunk of a file is looked up with array operations and scored with one batched model call.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import torch
from hydra.utils import get_class

from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.data.csv import IdChunks
from recsys_lightning.data.interactions import ITEM, USER
from recsys_lightning.errors import ConfigError, UnknownId, quote
from recsys_lightning.ranges import shown_path
from recsys_lightning.runs.atomic import atomic_file
from recsys_lightning.runs.trained_run import TrainedRun
from recsys_lightning.serving.arguments import PAIR_ID_COLUMNS

log = logging.getLogger(__name__)


def predicts_ratings(run: TrainedRun) -> bool:
    """Whether the loss the checkpoint records (a class a conf/loss option offers, checked on load) predicts ratings."""
    return bool(get_class(run.hyper_parameters["loss"]["_target_"]).predicts_ratings)


def score_column(run: TrainedRun) -> str:
    """The name of a pair's score in an export: `predicted_rating` for a rating model, else `score`."""
    return "predicted_rating" if predicts_ratings(run) else "score"


def pair_answer(run: TrainedRun, raw_user: Any, raw_item: Any) -> str:
    """One line: the model's score of one (user, item) pair, named a predicted rating for a rating model."""
    catalogue = run.catalogue
    user, item = _known(catalogue, "user", raw_user), _known(catalogue, "item", raw_item)
    device = catalogue.popularity.device
    with torch.no_grad():
        score = float(run.model.score(torch.tensor([user], device=device), torch.tensor([item], device=device))[0])
    title = f" ({' '.join(catalogue.title_of([item])[0].split())})" if catalogue.titles else ""  # one line, whatever the title holds
    trained = f"{run.model_name} trained with {run.hyper_parameters['loss']['_target_'].rsplit('.', 1)[-1]}"
    if predicts_ratings(run):
        return f"user {raw_user}, item {raw_item}{title}: predicted rating {score:.4f} ({trained})"
    return f"user {raw_user}, item {raw_item}{title}: score {score:.4f} ({trained}: it ranks items, it is no rating)"


def _known(catalogue: Catalogue, kind: str, raw_id: Any) -> int:
    index = catalogue.user_index(raw_id) if kind == "user" else catalogue.item_index(raw_id)
    if index is None:
        raise UnknownId(
            f"{kind} id {quote(raw_id)} is not in this run's data ({_valid_ids(catalogue, kind)}); "
            "a pair is scored only for ids the model was trained on"
        )
    return index


def _valid_ids(catalogue: Catalogue, kind: str) -> str:
    ids = catalogue.user_ids if kind == "user" else catalogue.item_ids
    return f"{len(ids):,} {kind}s, ids such as {quote(ids[0])}, {quote(ids[-1])}"


def export_pair_scores(run: TrainedRun, path: str, chunks: IdChunks, output: str | None, out: TextIO) -> int:
    """CSV `user_id,item_id,<score_column>` of every pair `chunks` (read_id_pairs of `path`) yields, ids as
    the file spells them; returns the number of pairs.

    A file output is written beside its target and renamed at the end, like a recommendations export: an
    unknown id, an interruption or a full disk leaves the earlier file (or none) in place.
    """
    header = ",".join([*PAIR_ID_COLUMNS, score_column(run)]) + "\n"
    if output is None:
        out.write(header)
        return _write_scores(run, path, chunks, out)
    try:
        with atomic_file(Path(output)) as handle:
            handle.write(header)
            pairs = _write_scores(run, path, chunks, handle)
    except OSError as error:  # a full disk or a file-size limit (EFBIG) mid-export: atomic_file left nothing behind
        raise ConfigError(
            f"output={shown_path(output)}: cannot write the pair scores ({error.strerror or error}); nothing was written: "
            "free space, raise the file-size limit (ulimit -f) or pick another path"
        ) from None
    log.info("wrote the scores of %d pairs to %s", pairs, output)
    return pairs


def _write_scores(run: TrainedRun, path: str, chunks: IdChunks, handle: TextIO) -> int:
    catalogue = run.catalogue
    device = catalogue.popularity.device
    # Ids as a file holds them: integer ids in their one decimal spelling, so `07`, `+7` or `7.0` match
    # nothing, as on the command line (Catalogue.user_index); text ids as they are.
    known = {"user": pd.Index(catalogue.user_ids.astype(str)), "item": pd.Index(catalogue.item_ids.astype(str))}
    pairs = 0
    for first_row, chunk, line_of_row in chunks:
        raw = {"user": chunk[USER].to_numpy(), "item": chunk[ITEM].to_numpy()}
        indices = {kind: known[kind].get_indexer(raw[kind]) for kind in known}
        for kind, found in indices.items():
            unknown = np.flatnonzero(found < 0)
            if len(unknown):
                row = int(unknown[0])
                raise UnknownId(
                    f"{path}: line {line_of_row(first_row + row)}: {kind} id {quote(raw[kind][row])} is not in this run's data "
                    f"({_valid_ids(catalogue, kind)}); score only pairs the model was trained on (remove that row)"
                )
        with torch.no_grad():
            users, items = (torch.from_numpy(indices[kind]).to(device) for kind in ("user", "item"))
            scores = run.model.score(users, items).float().cpu().numpy()
        pd.DataFrame({USER: raw["user"], ITEM: raw["item"], "score": scores}).to_csv(handle, header=False, index=False)
        pairs += len(chunk)
    return pairs
