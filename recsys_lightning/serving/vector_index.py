"""Item vectors in a FAISS inner-product index: exact (flat) or inverted-file (IVF) for large catalogues.

Row i of the index is item index i. Only models whose score is an inner product can be served this
way; MF's biases are folded into the vectors (`Recommender.item_vectors`), so the index ranks
exactly as the model does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recsys_lightning.errors import ConfigError

KINDS = ("flat", "ivf")


def import_faiss() -> Any:
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it reports which CPU build it picked
    try:
        import faiss
    except ImportError as error:
        raise ConfigError("index=faiss needs faiss-cpu: pip install -e '.[faiss]' (or pip install faiss-cpu)") from error
    return faiss


class ItemVectorIndex:
    """A FAISS index over item vectors, searched with torch tensors in and out.

    `nlist` inverted lists (IVF) default to about 4 sqrt(num_items); `nprobe` of them are visited per
    query, trading recall for speed (bench/bench_faiss.py measures both).
    """

    def __init__(self, index: Any, nprobe: int = 16) -> None:
        self.index = index
        if hasattr(index, "nprobe"):
            index.nprobe = nprobe

    @classmethod
    def build(cls, item_vectors: Tensor, kind: str = "flat", nlist: int | None = None, nprobe: int = 16,
              seed: int = 0) -> ItemVectorIndex:  # fmt: skip
        faiss = import_faiss()
        vectors = _float32(item_vectors)
        dim = vectors.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            nlist = nlist or max(1, min(int(4 * np.sqrt(len(vectors))), len(vectors) // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.train(vectors)
        else:
            raise ConfigError(f"faiss.kind={kind!r}: use one of {', '.join(KINDS)}")
        index.add(vectors)
        return cls(index, nprobe)

    @property
    def num_items(self) -> int:
        return self.index.ntotal

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(scores, item indices) [B, k], best first; index -1 (score -inf) where fewer than k were found."""
        scores, items = self.index.search(_float32(queries), k)
        scores, items = torch.from_numpy(scores).to(queries.device), torch.from_numpy(items).to(queries.device)
        return scores.masked_fill(items < 0, -torch.inf), items

    def save(self, path: str | Path) -> None:
        import_faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path, nprobe: int = 16) -> ItemVectorIndex:
        return cls(import_faiss().read_index(str(path)), nprobe)


def _float32(vectors: Tensor) -> np.ndarray:
    return np.ascontiguousarray(vectors.detach().float().cpu().numpy())
