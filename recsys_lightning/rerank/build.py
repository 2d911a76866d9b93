"""The re-ranker run's data and module from a composed config: the data and its split, the two checked
retriever runs, the feature histories (fold training rows for the training lists, all training rows for
validation and test) and the three candidate lists. Nothing is built from what a run folder says."""

from __future__ import annotations

import logging

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from recsys_lightning import progress
from recsys_lightning.build import build_datamodule, plain
from recsys_lightning.data.datamodule import InteractionDataModule, ranking_chunk_size
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.data.split import rerank_holdout
from recsys_lightning.errors import ConfigError
from recsys_lightning.rerank.datamodule import RerankDataModule, ServingStages
from recsys_lightning.rerank.features import CandidateFeatures, ItemSide, check_feature_names
from recsys_lightning.rerank.lists import candidate_lists, ms_per_1000_users, retriever_metrics
from recsys_lightning.rerank.module import STAGE, RerankerModule
from recsys_lightning.rerank.runs import FOLD_KEY, RETRIEVER_KEY, load_fold_retriever, load_retriever
from recsys_lightning.runs.other_runs import best_checkpoint_of

log = logging.getLogger(__name__)


# The keys of conf/experiment/ml100k_reranker.yaml's `retrieval` and `rerank` nodes: one added with `+`
# (`+rerank.holdot=0.25`) would be read by nothing, the run trained at the preset's value unsaid.
OWN_KEYS = {"retrieval": ("run_dir", "candidates"), "rerank": ("fold_run_dir", "holdout", "ease_l2", "batch_users")}


def check_reranker_config(cfg: DictConfig) -> None:
    """The re-ranker's own keys, before any data is read: one line naming the key."""
    for node, known in OWN_KEYS.items():
        unknown = sorted(set(cfg.get(node) or {}) - set(known))
        if unknown:
            raise ConfigError(
                f"{node}.{unknown[0]}: no such key of a re-ranker run; it takes {', '.join(f'{node}.{key}' for key in known)}"
            )
    for key in (RETRIEVER_KEY, FOLD_KEY):
        if not OmegaConf.select(cfg, key, default=None):  # unset, or ??? as the preset leaves it
            raise ConfigError(f"{key} is not set: {_commands()}")
    holdout = OmegaConf.select(cfg, "rerank.holdout")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
        raise ConfigError(f"rerank.holdout={holdout}: must be a share in (0, 1), the fold retriever's data.rerank_holdout (e.g. 0.125)")
    if cfg.data.get("rerank_holdout"):
        raise ConfigError(
            f"data.rerank_holdout={cfg.data.rerank_holdout}: the re-ranker run keeps all its training rows; "
            "the share held out is the fold retriever's (rerank.holdout), so drop data.rerank_holdout here"
        )
    candidates = OmegaConf.select(cfg, "retrieval.candidates")
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < max(cfg.eval.ks):
        raise ConfigError(f"retrieval.candidates={candidates}: must be an integer >= max(eval.ks)={max(cfg.eval.ks)}, the lists' length")
    batch_users = OmegaConf.select(cfg, "rerank.batch_users")
    if batch_users is not None and (isinstance(batch_users, bool) or not isinstance(batch_users, int) or batch_users < 1):
        raise ConfigError(f"rerank.batch_users={batch_users}: must be an integer >= 1, or null (every user's lists in one step)")
    ease_l2 = OmegaConf.select(cfg, "rerank.ease_l2")
    if isinstance(ease_l2, bool) or not isinstance(ease_l2, (int, float)) or not ease_l2 > 0:
        raise ConfigError(f"rerank.ease_l2={ease_l2}: must be a number > 0 (model=ease's l2; 300 on ML-100K)")
    if cfg.get("ckpt_path") is not None:
        raise ConfigError("ckpt_path: a re-ranker run is not resumed (it trains in about a minute); start it again without ckpt_path")
    for key in (RETRIEVER_KEY, FOLD_KEY):  # a missing run is told before the data loads
        best_checkpoint_of(str(OmegaConf.select(cfg, key)), key)


def build_reranker(cfg: DictConfig) -> tuple[RerankDataModule, RerankerModule]:
    """The data module (the lists, and what serving them takes) and the module of a re-ranker run (`is_reranker(cfg)`)."""
    check_reranker_config(cfg)
    data: InteractionDataModule = build_datamodule(cfg.data)
    data.setup("fit")
    names = list(cfg.model.features)
    check_feature_names(names, data.training_data.item_features)
    holdout, n = float(cfg.rerank.holdout), int(cfg.retrieval.candidates)
    train_rows = data.split.train
    held = rerank_holdout(data.interactions.users[train_rows], holdout, data.seed)
    train, fold_train, targets = data.train_positives, _csr(data, train_rows[~held]), _csr(data, train_rows[held])
    catalogue = data.training_data.catalogue
    retriever = load_retriever(str(cfg.retrieval.run_dir), catalogue, train)
    fold = load_fold_retriever(str(cfg.rerank.fold_run_dir), str(cfg.retrieval.run_dir), catalogue, train, fold_train, holdout)
    items = ItemSide.from_table(data.training_data.item_features, data.num_items)
    ease_l2 = float(cfg.rerank.ease_l2)
    chunk_size = ranking_chunk_size(data.eval_chunk_size, data.eval_max_scores, data.num_items)
    with progress.building("re-ranker candidate lists"):
        fold_features = CandidateFeatures(names, fold_train, items, ease_l2)
        training = candidate_lists(fold.model, targets, fold_train, fold_features, n, chunk_size)
        serving = CandidateFeatures(names, train, items, ease_l2)
        valid = candidate_lists(retriever.model, data.valid_positives, train, serving, n, chunk_size)
        test = candidate_lists(retriever.model, data.test_positives, train.union(data.valid_positives), serving, n, chunk_size)
    found = sum(int(part.targets.sum()) for part in training)
    if not found:
        raise ConfigError(
            f"none of the {int(held.sum()):,} held-out training rows is among the fold retriever's top {n} "
            f"({FOLD_KEY}), so the ranker has nothing to learn from: raise retrieval.candidates or rerank.holdout"
        )
    log.info(
        "re-ranker lists: %s training rows held out (rerank.holdout=%g), %.4f of them among the fold retriever's top %d; "
        "%d validation and %d test users",
        f"{int(held.sum()):,}",
        holdout,
        found / max(int(held.sum()), 1),
        n,
        sum(len(part) for part in valid),
        sum(len(part) for part in test),
    )
    batch_users = OmegaConf.select(cfg, "rerank.batch_users")
    datamodule = RerankDataModule(
        training, valid, test, batch_users, int(cfg.seed), data.source, ServingStages(retriever.model, n, serving)
    )
    module = RerankerModule(
        plain(cfg.model), plain(cfg.optimizer), plain(cfg.get("scheduler")), list(cfg.eval.ks), data.num_items, catalogue, n, ease_l2
    )
    return datamodule, module


def reranker_figures(datamodule: RerankDataModule, module: RerankerModule, ks: list[int]) -> dict[str, float]:
    """For metrics.json beside the two-stage figures: the retriever alone on the same lists, the two stages'
    NDCG over the retriever's, and the milliseconds per 1,000 test users to serve a top max(K) each way."""
    figures: dict[str, float] = {}
    for part, lists in (("val", datamodule.valid), ("test", datamodule.test)):
        for name, value in retriever_metrics(lists, ks, module.num_items).items():
            figures[f"{part}/retriever/{name}"] = value
    k, stages = max(ks), datamodule.serving
    module.model.cpu().eval()
    lists = datamodule.test or datamodule.valid
    figures["retriever_ms_per_1000_users"] = round(ms_per_1000_users(stages.retriever, None, None, lists, stages.candidates, k), 2)
    figures[f"{STAGE}_ms_per_1000_users"] = round(
        ms_per_1000_users(stages.retriever, stages.features, module.model, lists, stages.candidates, k), 2
    )
    return figures


def closing_lines(metrics: dict[str, float], k: int) -> str:
    """The closing table's note: the retriever alone and the ratio of the two stages to it, with the cost."""
    ratios = []
    for part in ("val", "test"):
        ours, theirs = metrics.get(f"{part}/{STAGE}/ndcg@{k}"), metrics.get(f"{part}/retriever/ndcg@{k}")
        if ours is not None and theirs:
            ratios.append(f"{part} {theirs:.4f} -> {ours:.4f} ({ours / theirs:.3f}x)")
    cost = (
        f"{metrics.get('retriever_ms_per_1000_users')} ms per 1,000 users alone, "
        f"{metrics.get(f'{STAGE}_ms_per_1000_users')} ms with the second stage"
    )
    return f"retriever alone -> two stages, ndcg@{k}: {', '.join(ratios)}; {cost}"


def _csr(data: InteractionDataModule, rows: np.ndarray) -> UserItemCSR:
    interactions = data.interactions
    return UserItemCSR.from_pairs(
        torch.from_numpy(interactions.users[rows]), torch.from_numpy(interactions.items[rows]), data.num_users, data.num_items
    )


def _commands() -> str:
    return (
        "train the retriever (train experiment=ml100k_mf), its fold (the same plus data.rerank_holdout=0.125), then "
        "train experiment=ml100k_reranker retrieval.run_dir=<retriever run> rerank.fold_run_dir=<fold run>"
    )
