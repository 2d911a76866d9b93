"""A second stage trained for its job: a ranker that reorders a retriever's top-N candidates per user,
learnt listwise from a fold retriever's candidates (`data.rerank_holdout`) and judged on the two-stage
NDCG of the real retriever's candidates (`val/two_stage/ndcg@10`). `experiment=ml100k_reranker`; the
README's "Two stages" says when it pays.

features.py: what the ranker sees of each (user, candidate); lists.py: every user's candidates with
their features and targets; ranker.py: the model and its loss; runs.py: the two retriever runs, checked;
module.py, datamodule.py: the Lightning side; build.py: all of it from a composed config.
"""

from __future__ import annotations

from typing import Any

from recsys_lightning.rerank.ranker import LinearReranker

RERANKER_TARGETS = frozenset({"recsys_lightning.rerank.LinearReranker", "recsys_lightning.rerank.ranker.LinearReranker"})


def is_reranker(cfg: Any) -> bool:
    """Whether the composed config's model is a re-ranker: train.py then trains it on candidate lists."""
    model = cfg.get("model") if hasattr(cfg, "get") else None
    return bool(model) and str(model.get("_target_", "")) in RERANKER_TARGETS


__all__ = ["LinearReranker", "RERANKER_TARGETS", "is_reranker"]
