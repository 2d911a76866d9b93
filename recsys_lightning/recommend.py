"""Entry point: answers from a trained run's checkpoint, with no training data needed.

python -m recsys_lightning.recommend run_dir=outputs/runs/<run> user_id=42 k=10
python -m recsys_lightning.recommend run_dir=outputs/runs/<run> item_id=1          # similar items
python -m recsys_lightning.recommend run_dir=outputs/runs/<run> similar_users=42 k=5
python -m recsys_lightning.recommend run_dir=outputs/runs/<run> users=all output=recs.csv
python -m recsys_lightning.recommend run_dir=outputs/runs/<run> user_id=42 item_id=1   # one pair's score
python -m recsys_lightning.recommend run_dir=outputs/runs/<run> pairs=pairs.csv output=scores.csv
python -m recsys_lightning.recommend run_dir=outputs/runs/<run> user_id=42 index=faiss
python -m recsys_lightning.recommend run_dir=outputs/runs/<reranker> retrieval.run_dir=outputs/runs/<retriever> user_id=42
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any, TextIO

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm import tqdm

from recsys_lightning.config import check_override_keys, register_resolvers
from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.data.csv import read_id_pairs
from recsys_lightning.errors import ConfigError, RecsysError, exit_with_message, interruptions_raise, quote
from recsys_lightning.ranges import shown_path
from recsys_lightning.rerank.trained import is_reranker_checkpoint, load_reranker
from recsys_lightning.runs.atomic import atomic_file
from recsys_lightning.runs.checkpoint_file import find_checkpoint, load_checkpoint
from recsys_lightning.runs.other_runs import best_checkpoint_of, check_same_data
from recsys_lightning.runs.trained_run import TrainedRun, load_trained, torch_device, trained_from
from recsys_lightning.serving.arguments import CSV_COLUMNS, TWO_STAGE_CSV_COLUMNS, check_serving_config, in_run_folder
from recsys_lightning.serving.pairs import export_pair_scores, pair_answer
from recsys_lightning.serving.reranker import RerankerService, moved_by
from recsys_lightning.serving.service import ITEM_ITEM, UNKNOWN, Recommendations, RecommendationService, TwoStageService
from recsys_lightning.serving.vector_index import ItemVectorIndex, open_or_build
from recsys_lightning.threads import apply_thread_count

log = logging.getLogger(__name__)
register_resolvers()

ACTIONS = ("user_id", "item_id", "similar_users", "users", "pairs")


def serve(cfg: DictConfig, out: TextIO = sys.stdout) -> None:
    """Run the one request `cfg` asks for and write its answer to `out` (or to cfg.output).

    Every argument is checked before the checkpoint is loaded, so a typo costs no export.
    """
    check_serving_config(cfg)
    chosen = [action for action in ACTIONS if cfg.get(action) is not None]
    if chosen in (["user_id", "item_id"], ["pairs"]):
        _score_pairs(cfg, out)
        return
    if len(chosen) != 1:
        raise ConfigError(
            f"ask one thing per call: set exactly one of {', '.join(ACTIONS)}, or user_id with item_id for one pair's score "
            f"(got {', '.join(chosen) or 'none'})"
        )
    path = find_checkpoint(cfg.run_dir, cfg.checkpoint)
    service = _service(cfg, load_checkpoint(path, torch_device(cfg.device)), path)
    log.info("serving %s from %s", service.run.model_name, path)
    action = chosen[0]
    k = _answerable_k(cfg.k, action, service)
    try:
        if action == "user_id":
            print(_recommendation_table(service, cfg.user_id, k), file=out)
        elif action == "item_id":
            print(_neighbour_table(service, "item", cfg.item_id, k, cfg.embedding), file=out)
        elif action == "similar_users":
            print(_neighbour_table(service, "user", cfg.similar_users, k, cfg.embedding), file=out)
        else:
            export_recommendations(service, _requested_users(cfg.users), k, _output_path(cfg), out)
        out.flush()
    except OSError as error:  # writing to `out`: an output= file's own errors are ConfigErrors already
        raise _cannot_write(error, out) from None


def _output_path(cfg: DictConfig) -> str | None:
    """Where a batch export writes: `output=` inside the run folder when relative, None for standard output."""
    return in_run_folder(cfg.run_dir, cfg.output) if cfg.output is not None else None


def _score_pairs(cfg: DictConfig, out: TextIO) -> None:
    """The model's score of user_id with item_id (one line), or of every pair in the `pairs` file (a CSV).
    The file and its columns are checked before the checkpoint is loaded."""
    chunks = None
    if cfg.pairs is not None:
        columns = {"user_col": cfg.pair_columns.user, "item_col": cfg.pair_columns.item}
        chunks = read_id_pairs(cfg.pairs, **columns, key="pairs", columns_key="pair_columns", chunk_rows=cfg.chunk_size)
    run = load_trained(find_checkpoint(cfg.run_dir, cfg.checkpoint), torch_device(cfg.device))
    log.info("scoring pairs with %s from %s", run.model_name, run.checkpoint_path)
    try:
        if chunks is None:
            print(pair_answer(run, cfg.user_id, cfg.item_id), file=out)
        else:
            export_pair_scores(run, cfg.pairs, chunks, _output_path(cfg), out)
        out.flush()
    except OSError as error:  # writing to `out`: an output= file's own errors are ConfigErrors already
        raise _cannot_write(error, out) from None


def _cannot_write(error: OSError, out: TextIO) -> ConfigError:
    """A pipe closed early (`| head`), or a full disk or file-size limit under `> file`: one line, not a traceback."""
    with suppress(AttributeError, OSError, ValueError):  # Python flushes stdout again at exit: that must not fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    if isinstance(error, BrokenPipeError):
        return ConfigError("standard output was closed before the whole answer was written (a pipe into head?); it is incomplete")
    return ConfigError(
        f"cannot write the answer to standard output ({error.strerror or error}); what was written is incomplete: "
        "free space, raise the file-size limit (ulimit -f) or export with users=... output=<file>"
    )


def _answerable_k(k: int, action: str, service: RecommendationService) -> int:
    """`k`, or the most that `action` can answer with when k is more, said once as a warning: the
    catalogue's items, the candidates of two stages, or the other items or users for neighbours."""
    items, users = service.catalogue.num_items, service.catalogue.num_users
    if action == "item_id":
        most, why = items - 1, f"this run has {items:,} items, so at most {items - 1:,} similar items"
    elif action == "similar_users":
        most, why = users - 1, f"this run has {users:,} users, so at most {users - 1:,} similar users"
    elif isinstance(service, TwoStageService):
        most, why = service.max_k, f"two stages re-rank {service.max_k:,} candidates per user, so answers hold at most that many"
    else:
        most, why = service.max_k, f"this run has {service.max_k:,} items, so answers hold at most {service.max_k:,}"
    if k <= most:
        return k
    log.warning("k=%d: %s", k, why)
    return max(most, 1)


def _service(cfg: DictConfig, checkpoint: dict[str, Any], path: Path) -> RecommendationService:
    """The checkpoint's model over the whole catalogue or, with retrieval.run_dir, re-ranking a retriever's
    candidates; a re-ranker run's (experiment=ml100k_reranker) only the latter."""
    options = {"exclude": list(cfg.exclude), "min_history": cfg.min_history, "chunk_size": cfg.chunk_size}
    if is_reranker_checkpoint(checkpoint):
        return _reranker_service(cfg, checkpoint, path, options)
    run = trained_from(checkpoint, path, torch_device(cfg.device))
    if cfg.retrieval.run_dir is None:
        return RecommendationService(run, **options, index=_vector_index("index", cfg.index, cfg.faiss, run, cfg.run_dir))
    retriever = load_trained(best_checkpoint_of(cfg.retrieval.run_dir, "retrieval.run_dir"), torch_device(cfg.device))
    check_same_data(retriever.catalogue, run.catalogue, cfg.retrieval.run_dir, cfg.run_dir)
    if cfg.retrieval.candidates > run.catalogue.num_items:
        log.warning(
            "retrieval.candidates=%d: this run has %s items, so every unseen item is a candidate",
            cfg.retrieval.candidates,
            f"{run.catalogue.num_items:,}",
        )
    retrieval = RecommendationService(
        retriever, **options, index=_vector_index("retrieval.index", cfg.retrieval.index, cfg.faiss, retriever, cfg.retrieval.run_dir)
    )
    return TwoStageService(run, retrieval, cfg.retrieval.candidates, **options)


def _reranker_service(cfg: DictConfig, checkpoint: dict[str, Any], path: Path, options: dict[str, Any]) -> RerankerService:
    """A re-ranker run re-ranking the top N of retrieval.run_dir, the N it was trained on; the retriever must
    hold the same data, split and seed (the candidates it was trained and tested on)."""
    if cfg.retrieval.run_dir is None:
        raise ConfigError(
            f"run_dir={cfg.run_dir} is a re-ranker's run: it re-ranks a retriever's candidates, so add "
            "retrieval.run_dir=<the retriever run it was trained with>"
        )
    if torch_device(cfg.device).type != "cpu":
        raise ConfigError(f"device={cfg.device}: a re-ranker run is served on the CPU, where its features are computed; use device=cpu")
    retriever_path = best_checkpoint_of(cfg.retrieval.run_dir, "retrieval.run_dir")  # a missing one told before data loads
    run = load_reranker(checkpoint, path, Path(cfg.run_dir))
    retriever = load_trained(retriever_path)
    check_same_data(retriever.catalogue, run.catalogue, cfg.retrieval.run_dir, cfg.run_dir)
    if cfg.retrieval.candidates != run.candidates:
        log.info("retrieval.candidates=%d: the re-ranker re-ranks the top %d it was trained on", cfg.retrieval.candidates, run.candidates)
    retrieval = RecommendationService(
        retriever, **options, index=_vector_index("retrieval.index", cfg.retrieval.index, cfg.faiss, retriever, cfg.retrieval.run_dir)
    )
    return RerankerService(run, retrieval, **options)


def export_recommendations(
    service: RecommendationService, raw_users: list[Any] | None, k: int, output: str | None, out: TextIO = sys.stdout
) -> None:
    """CSV of every requested user's top k (all users when `raw_users` is None), a chunk at a time.

    A file output is written beside its target and renamed at the end: an interrupted export never
    leaves a half-written file in its place.
    """
    catalogue = service.catalogue
    if raw_users is None:
        raw_users = list(catalogue.user_ids)
        users = torch.arange(catalogue.num_users, device=catalogue.popularity.device)
    else:
        users = service.user_indices(raw_users)
    raw_user_ids = np.asarray(raw_users, dtype=object)
    unknown = raw_user_ids[(users == UNKNOWN).cpu().numpy()]
    if len(unknown):  # they still get rows (popular items), so a typo in an id would otherwise pass unseen
        examples = ", ".join(quote(raw) for raw in pd.unique(unknown)[:3])
        log.warning(
            "%d of %d requested users are unknown to this run (e.g. %s): they get the most popular items (source=popularity)",
            len(unknown),
            len(raw_user_ids),
            examples,
        )
    chunks = service.recommend_in_chunks(users, k)
    # disable=None: no bar when stderr is not a terminal, where every frame would be a line of the log.
    progress = tqdm(chunks, total=-(-len(users) // service.chunk_size), desc="recommend", unit="chunk", file=sys.stderr, disable=None)
    columns = TWO_STAGE_CSV_COLUMNS if isinstance(service, TwoStageService) else CSV_COLUMNS
    if output is None:
        _write_csv(progress, raw_user_ids, catalogue, out, columns)
        return
    target = Path(output)
    try:
        with atomic_file(target) as handle:
            rows = _write_csv(progress, raw_user_ids, catalogue, handle, columns)
    except OSError as error:  # a full disk or a file-size limit (EFBIG) mid-export: atomic_file left nothing behind
        raise ConfigError(
            f"output={shown_path(output)}: cannot write the recommendations ({error.strerror or error}); nothing was written: "
            "free space, raise the file-size limit (ulimit -f) or pick another path"
        ) from None
    log.info("wrote %d rows for %d users to %s", rows, len(users), target)


def _write_csv(chunks, raw_user_ids: np.ndarray, catalogue: Catalogue, handle: TextIO, columns: list[str]) -> int:
    """One DataFrame per chunk (its `columns`), built by array indexing; returns the number of rows written."""
    rows, start = 0, 0
    handle.write(",".join(columns) + "\n")
    for chunk in chunks:
        frame = _frame(chunk, raw_user_ids[start : start + len(chunk.users)], catalogue)
        frame.to_csv(handle, header=False, index=False)
        rows += len(frame)
        start += len(chunk.users)
    return rows


def _frame(chunk: Recommendations, raw_user_ids: np.ndarray, catalogue: Catalogue) -> pd.DataFrame:
    num_users, k = chunk.items.shape
    scores = chunk.scores.cpu().numpy().reshape(-1)
    found = np.isfinite(scores)
    fallback = np.repeat(chunk.fallback.cpu().numpy(), k)[found]
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(raw_user_ids, k)[found],
            "rank": np.tile(np.arange(1, k + 1), num_users)[found],
            "item_id": catalogue.item_ids[chunk.items.cpu().numpy().reshape(-1)[found]],
            "score": scores[found],
            "source": np.where(fallback, "popularity", "model"),
        }
    )
    if chunk.retrieval_scores is not None:
        frame["retrieval_score"] = chunk.retrieval_scores.cpu().numpy().reshape(-1)[found]
    return frame


def _recommendation_table(service: RecommendationService, raw_user: Any, k: int) -> str:
    catalogue = service.catalogue
    if isinstance(service, RerankerService):
        answer, retrieval_ranks, lifts = service.explain(service.user_indices([raw_user]), k)
    else:
        answer = service.recommend_for([raw_user], k)
    index = int(answer.users[0])
    frame = _frame(answer, np.array([raw_user], dtype=object), catalogue)
    frame.insert(3, "title", catalogue.title_of(answer.items[0, : len(frame)].tolist()))
    if isinstance(service, RerankerService) and not bool(answer.fallback[0]):
        frame.insert(2, "retrieval_rank", retrieval_ranks[0, : len(frame)].numpy())
        frame["moved_by"] = moved_by(lifts[0, : len(frame)], service.run.features.names)
    if index == UNKNOWN:
        heading = f"user {raw_user} is unknown to this run: the {len(frame)} most popular items (source=popularity)"
    elif bool(answer.fallback[0]):
        history = int(service.history[index])
        heading = (
            f"user {raw_user} has {history} training interactions (< min_history={service.min_history}): "
            f"the {len(frame)} most popular {service.shown_items} (source=popularity)"
        )
    else:
        heading = f"top {len(frame)} {service.shown_items} for user {raw_user} ({service.ranking})"
    return heading + "\n" + frame.drop(columns="user_id").to_string(index=False)


def _neighbour_table(service: RecommendationService, kind: str, raw_id: Any, k: int, embedding: str | None) -> str:
    catalogue = service.catalogue
    found = service.similar_items_to(raw_id, k, embedding) if kind == "item" else service.similar_users_to(raw_id, k, embedding)
    neighbours = found.indices.cpu().numpy()
    frame = pd.DataFrame({"rank": np.arange(1, len(neighbours) + 1)})
    if kind == "item":
        frame["item_id"] = catalogue.item_ids[neighbours]
        frame["title"] = catalogue.title_of(neighbours.tolist())
        subject = f"item {raw_id}" + (f" ({catalogue.title_of([catalogue.item_index(raw_id)])[0]})" if catalogue.titles else "")
    else:
        frame["user_id"] = catalogue.user_ids[neighbours]
        frame["history"] = service.history[found.indices].cpu().numpy()
        subject = f"user {raw_id}"
    frame["similarity"] = found.similarities.cpu().numpy()
    if found.embedding == ITEM_ITEM:
        measure = f"the {service.run.model_name} item-item weights from it"
    else:
        measure = f"cosine similarity of the {service.run.model_name} '{found.embedding}' {kind} embeddings"
    heading = f"{kind}s most similar to {subject}: {measure}"
    return heading + "\n" + frame.to_string(index=False)


def _vector_index(key: str, index: str, settings: DictConfig, run: TrainedRun, run_dir: str) -> ItemVectorIndex | None:
    """None to score with the model, else a FAISS index of the run's item vectors, kept in faiss.path
    (relative: in `run_dir`, the run's folder) when it is set and reused only while it holds these very
    vectors (see `open_or_build`). `key` is the setting that asked for it (index, or retrieval.index for a retriever)."""
    if index == "model":
        return None
    if index != "faiss":
        raise ConfigError(f"{key}={index!r}: use model or faiss")
    item_vectors = run.model.item_vectors()
    if item_vectors is None:
        raise ConfigError(f"{key}=faiss serves inner-product models (mf, popularity); {run.model_name} is not one, use {key}=model")
    path = in_run_folder(run_dir, settings.path) if settings.path else None
    return open_or_build(item_vectors, path, settings.kind, settings.nlist, settings.nprobe, item_ids=run.catalogue.item_ids)


def _requested_users(users: str | ListConfig) -> list[Any] | None:
    """None for `all`, else the list of raw ids (check_serving_config accepted one of the two)."""
    return None if users == "all" else list(users)


@hydra.main(version_base="1.3", config_path="../conf", config_name="recommend")
def main(cfg: DictConfig) -> None:
    try:
        with interruptions_raise("recommend was interrupted; no output file was written or changed"):
            apply_thread_count(OmegaConf.select(cfg, "runtime.threads", default="auto"))
            serve(cfg)
    except RecsysError as error:
        exit_with_message(error)


if __name__ == "__main__":
    try:
        check_override_keys(sys.argv[1:], "recommend")
    except ConfigError as error:
        exit_with_message(error)
    main()
