"""Item vectors in a FAISS inner-product index: exact (flat) or inverted-file (IVF) for large catalogues.

Row i of the index is item index i. Only models whose score is an inner product can be served this
way; MF's biases are folded into the vectors (`Recommender.item_vectors`), so the index ranks
exactly as the model does. `open_or_build` keeps an index in a file and reuses it only when the file
provably holds these vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recsys_lightning.atomic import atomic_file
from recsys_lightning.errors import ConfigError, first_line

log = logging.getLogger(__name__)

KINDS = ("flat", "ivf")
SIDECAR_FORMAT = 1  # bump when the sidecar's keys change: older files are then rebuilt, not misread
MAX_SHOWN = 200  # characters of a user's path or value quoted in a message


def import_faiss() -> Any:
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it reports which CPU build it picked
    try:
        import faiss
    except ImportError as error:
        raise ConfigError("index=faiss needs faiss-cpu: pip install -e '.[faiss]' (or pip install faiss-cpu)") from error
    return faiss


def check_settings(num_items: int, kind: str, nlist: int | None, nprobe: int) -> None:
    """One line naming the faiss.* key, instead of a FAISS assertion (or an IVF that cannot train)."""
    if kind not in KINDS:
        raise ConfigError(f"faiss.kind={_shown(kind)}: use one of {', '.join(KINDS)}")
    if not _is_int(nprobe) or nprobe < 1:
        raise ConfigError(f"faiss.nprobe={_shown(nprobe)}: must be an integer >= 1 (inverted lists visited per query)")
    if nlist is not None and (not _is_int(nlist) or not 1 <= nlist <= num_items):
        raise ConfigError(f"faiss.nlist={_shown(nlist)}: must be an integer from 1 to {num_items:,} (the number of items), "
                          "or null for about 4 sqrt(items)")  # fmt: skip


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
        check_settings(len(vectors), kind, nlist, nprobe)
        dim = vectors.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        else:
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, _nlist(nlist, len(vectors)), faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.train(vectors)
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

    @classmethod
    def load(cls, path: str | Path, nprobe: int = 16) -> ItemVectorIndex:
        """The index in `path` as is, unchecked: `open_or_build` is the way to reuse a file safely."""
        return cls(import_faiss().read_index(str(path)), nprobe)


def open_or_build(item_vectors: Tensor, path: str | Path | None, kind: str = "flat", nlist: int | None = None,
                  nprobe: int = 16, seed: int = 0, item_ids: np.ndarray | None = None) -> ItemVectorIndex:  # fmt: skip
    """The index of `item_vectors`, kept in `path` (none: built in memory only).

    A file is reused only when its sidecar `<path>.json` records these very vectors (count, width,
    sha256 of their float32 bytes) and settings, the file's own sha256 is the recorded one, and the
    loaded index has the expected size; a path and a date say nothing about what a file holds, and
    another run's index of the same width would serve the wrong items. Otherwise the index is built
    and written, with `<path>.items.csv` (row i -> raw item id) when `item_ids` are given.
    """
    vectors = _float32(item_vectors)
    check_settings(len(vectors), kind, nlist, nprobe)
    if path is None:
        return ItemVectorIndex.build(item_vectors, kind, nlist, nprobe, seed)
    path = _writable_file(Path(path))
    built_from = {
        "format": SIDECAR_FORMAT, "num_items": len(vectors), "dim": vectors.shape[1], "kind": kind,
        "nlist": _nlist(nlist, len(vectors)) if kind == "ivf" else None, "seed": seed if kind == "ivf" else None,
        "vectors_sha256": hashlib.sha256(vectors).hexdigest(),
    }  # fmt: skip
    reused = _reuse(path, built_from, nprobe)
    if reused is not None:
        log.info("loaded the %s index from %s", kind, path)
        return reused
    index = ItemVectorIndex.build(item_vectors, kind, nlist, nprobe, seed)
    serialized = import_faiss().serialize_index(index.index)
    _write_atomically(path, serialized)
    if item_ids is not None:
        rows = pd.DataFrame({"row": np.arange(len(item_ids)), "item_id": item_ids})
        _write_atomically(_beside(path, ".items.csv"), rows.to_csv(index=False).encode())
    # The sidecar goes last: until it names the new file's hash, the file is never reused.
    sidecar = {**built_from, "index_sha256": hashlib.sha256(serialized).hexdigest()}
    _write_atomically(_beside(path, ".json"), json.dumps(sidecar, indent=1).encode())
    log.info("wrote the %s index of %d items to %s", kind, index.num_items, path)
    return index


def _reuse(path: Path, built_from: dict[str, Any], nprobe: int) -> ItemVectorIndex | None:
    """The index in `path` when it is provably the one `built_from` describes, else None (and why, logged)."""
    if not path.is_file():
        return None
    sidecar = _beside(path, ".json")
    try:
        recorded = json.loads(sidecar.read_bytes())
        if not isinstance(recorded, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        log.warning("faiss.path=%s: cannot read %s (%s); rebuilding the index", _shown(path), sidecar.name, first_line(error))
        return None
    changed = [key for key, value in built_from.items() if recorded.get(key) != value]
    if changed:
        log.warning("faiss.path=%s was built from other item vectors or settings (%s differ); rebuilding the index",
                    _shown(path), ", ".join(changed))  # fmt: skip
        return None
    try:
        with open(path, "rb") as handle:
            matches = hashlib.file_digest(handle, "sha256").hexdigest() == recorded.get("index_sha256")
        loaded = ItemVectorIndex.load(path, nprobe) if matches else None
    except (OSError, RuntimeError) as error:  # FAISS raises RuntimeError for a file it cannot parse
        log.warning("faiss.path=%s: cannot read the index (%s); rebuilding the index", _shown(path), first_line(error))
        return None
    if loaded is None:
        log.warning("faiss.path=%s changed since %s was written; rebuilding the index", _shown(path), sidecar.name)
        return None
    if (loaded.num_items, loaded.index.d) != (built_from["num_items"], built_from["dim"]):
        log.warning("faiss.path=%s holds %d vectors of width %d, not %d of width %d; rebuilding the index", _shown(path),
                    loaded.num_items, loaded.index.d, built_from["num_items"], built_from["dim"])  # fmt: skip
        return None
    return loaded


def _writable_file(path: Path) -> Path:
    if path.is_dir():
        raise ConfigError(f"faiss.path={_shown(path)}: is a folder; give a file path such as {_shown(path / 'items.faiss')}")
    if not path.parent.is_dir():
        raise ConfigError(f"faiss.path={_shown(path)}: folder {_shown(path.parent)} does not exist; create it or pick another path")
    return path


def _write_atomically(target: Path, data: Any) -> None:
    """Write `data` (bytes or a buffer) so that `target` is either the old file or the whole new one."""
    try:
        with atomic_file(target, "wb") as handle:
            handle.write(data)
    except OSError as error:
        raise ConfigError(f"faiss.path: cannot write {_shown(target)} ({error.strerror or error}); pick another path") from error


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _nlist(nlist: int | None, num_items: int) -> int:
    return nlist or max(1, min(int(4 * np.sqrt(num_items)), num_items // 39))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _float32(vectors: Tensor) -> np.ndarray:
    return np.ascontiguousarray(vectors.detach().float().cpu().numpy())
