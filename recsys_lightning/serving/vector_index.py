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
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recsys_lightning.errors import ConfigError, cut, first_line, quote
from recsys_lightning.runs.atomic import atomic_file
from recsys_lightning.serving.index_file import layout_mismatch

log = logging.getLogger(__name__)

KINDS = ("flat", "ivf")
SIDECAR_FORMAT = 1  # bump when the sidecar's keys change: older files are then rebuilt, not misread
MAX_SIDECAR_BYTES = 2**16  # a sidecar of ours is a few hundred bytes
MAX_SHOWN = 200  # characters of a user's path or value quoted in a message


def import_faiss() -> Any:
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it reports which CPU build it picked
    try:
        import faiss
    except ImportError as error:
        raise ConfigError("index=faiss needs faiss-cpu: pip install -e '.[faiss]' (or pip install faiss-cpu)") from error
    return faiss


def check_nlist(nlist: int | None, num_items: int) -> None:
    """One line naming faiss.nlist, instead of an IVF that cannot train: what it accepts depends on the items (the
    other faiss.* keys are held to their ranges up front, serving/arguments.py)."""
    if nlist is not None and (not _is_int(nlist) or not 1 <= nlist <= num_items):
        raise ConfigError(
            f"faiss.nlist={_shown(nlist)}: must be an integer from 1 to {num_items:,} (the number of items), "
            "or null for about 4 sqrt(items)"
        )


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
    def build(cls, item_vectors: Tensor, kind: str = "flat", nlist: int | None = None, nprobe: int = 16, seed: int = 0) -> ItemVectorIndex:
        faiss = import_faiss()
        vectors = _float32(item_vectors)
        check_nlist(nlist, len(vectors))
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
    def description(self) -> str:
        """What searched, for a heading: 'a FAISS flat index' or 'a FAISS IVF index (nprobe 16)'."""
        if hasattr(self.index, "nprobe"):
            return f"a FAISS IVF index (nprobe {self.index.nprobe})"
        return "a FAISS flat index"

    @property
    def num_items(self) -> int:
        return self.index.ntotal

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(scores, item indices) [B, min(k, num_items)], best first; index -1 (score -inf) where fewer were
        found. FAISS allocates B x k results, so a k past the catalogue is cut to it."""
        scores, items = self.index.search(_float32(queries), min(k, self.num_items))
        scores, items = torch.from_numpy(scores).to(queries.device), torch.from_numpy(items).to(queries.device)
        return scores.masked_fill(items < 0, -torch.inf), items

    @classmethod
    def load(cls, path: str | Path, nprobe: int = 16) -> ItemVectorIndex:
        """The index in `path` as is, unchecked: `open_or_build` is the way to reuse a file safely."""
        return cls(import_faiss().read_index(str(path)), nprobe)


def open_or_build(
    item_vectors: Tensor,
    path: str | Path | None,
    kind: str = "flat",
    nlist: int | None = None,
    nprobe: int = 16,
    seed: int = 0,
    item_ids: np.ndarray | None = None,
) -> ItemVectorIndex:
    """The index of `item_vectors`, kept in `path` (none: built in memory only).

    A file is reused only when its sidecar `<path>.json` records these very vectors (count, width,
    sha256 of their float32 bytes) and settings, the file's own sha256 is the recorded one, and the
    loaded index holds exactly these vectors, ranked by inner product; a path and a date say nothing
    about what a file holds, and another run's index of the same width would serve the wrong items.
    Otherwise the index is built and written, with `<path>.items.csv` (row i -> raw item id) when
    `item_ids` are given; existing files are replaced only when a sidecar of ours says they are ours.
    """
    vectors = _float32(item_vectors)
    check_nlist(nlist, len(vectors))
    if path is None:
        return ItemVectorIndex.build(item_vectors, kind, nlist, nprobe, seed)
    path = _writable_file(Path(path))
    items_csv = _beside(path, ".items.csv")
    recorded = _our_record(path, [path, _beside(path, ".json"), *([items_csv] if item_ids is not None else [])])
    built_from = {
        "format": SIDECAR_FORMAT,
        "num_items": len(vectors),
        "dim": vectors.shape[1],
        "kind": kind,
        "nlist": _nlist(nlist, len(vectors)) if kind == "ivf" else None,
        "seed": seed if kind == "ivf" else None,
        "vectors_sha256": hashlib.sha256(vectors).hexdigest(),
    }
    reused = _reuse(path, recorded, built_from, vectors, nprobe) if recorded is not None else None
    if reused is not None:
        log.info("loaded the %s index from %s", kind, path)
        return reused
    index = ItemVectorIndex.build(item_vectors, kind, nlist, nprobe, seed)
    serialized = import_faiss().serialize_index(index.index)
    # The sidecar goes first and the index last: the index is reused only when its hash is the
    # sidecar's, so files left by a run cut off between the writes are rebuilt (being ours), never served.
    sidecar = {**built_from, "index_sha256": hashlib.sha256(serialized).hexdigest()}
    _write_atomically(_beside(path, ".json"), json.dumps(sidecar, indent=1).encode())
    if item_ids is not None:
        rows = pd.DataFrame({"row": np.arange(len(item_ids)), "item_id": item_ids})
        _write_atomically(items_csv, rows.to_csv(index=False).encode())
    _write_atomically(path, serialized)
    log.info("wrote the %s index of %d items to %s", kind, index.num_items, path)
    return index


def _our_record(path: Path, targets: list[Path]) -> dict[str, Any] | None:
    """The record in `<path>.json` when it is ours, None when none of `targets` (the files a build
    writes) exists yet; else a ConfigError. A file with no sidecar of ours beside it may be anything
    (a checkpoint, a user's data behind a mistyped faiss.path), so it is refused, never overwritten."""
    existing = [target for target in targets if os.path.lexists(target)]
    if not existing:
        return None
    sidecar = _beside(path, ".json")
    try:
        recorded = json.loads(_small_file(sidecar))
        if _is_our_record(recorded):
            return recorded
        why = f"{sidecar.name} is not an index record this project wrote"
    except FileNotFoundError:
        why = f"no {sidecar.name} beside it"
    except OSError as error:
        why = f"cannot read {sidecar.name}: {error.strerror or first_line(error)}"
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        why = f"cannot read {sidecar.name}: {first_line(error)}"
    names = cut(", ".join(target.name for target in existing), MAX_SHOWN)
    raise ConfigError(
        f"faiss.path={_shown(path)}: refusing to overwrite {names}: not an index this project wrote ({why}); "
        "remove or move those files, or pick another path"
    )


def _small_file(path: Path) -> bytes:
    """A sidecar's bytes, read only from a regular file and never more than MAX_SIDECAR_BYTES: a FIFO
    would block and a huge file would be read whole. ValueError otherwise; FileNotFoundError when missing."""
    if path.exists() and not path.is_file() and not path.is_dir():  # open says "Is a directory" itself
        raise ValueError("not a regular file (a device, pipe or socket)")
    with open(path, "rb") as handle:
        data = handle.read(MAX_SIDECAR_BYTES + 1)
    if len(data) > MAX_SIDECAR_BYTES:
        raise ValueError(f"larger than the {MAX_SIDECAR_BYTES:,} bytes a record of ours takes")
    return data


def _is_our_record(recorded: Any) -> bool:
    """Keys every sidecar format has had: an older format is still ours (and rebuilt), a stranger's JSON is not."""
    return (
        isinstance(recorded, dict)
        and _is_int(recorded.get("format"))
        and all(isinstance(recorded.get(key), str) for key in ("vectors_sha256", "index_sha256"))
    )


def _reuse(path: Path, recorded: dict[str, Any], built_from: dict[str, Any], vectors: np.ndarray, nprobe: int) -> ItemVectorIndex | None:
    """The index in `path` when it is provably the one `built_from` describes, else None (and why, logged)."""
    if not path.is_file():
        return None
    changed = [key for key, value in built_from.items() if recorded.get(key) != value]
    if changed:
        log.warning(
            "faiss.path=%s was built from other item vectors or settings (%s differ); rebuilding the index",
            _shown(path),
            ", ".join(changed),
        )
        return None
    try:
        with open(path, "rb") as handle:
            matches = hashlib.file_digest(handle, "sha256").hexdigest() == recorded.get("index_sha256")
        # FAISS allocates whatever sizes the file declares before reading them: they are checked first.
        layout = {key: built_from[key] for key in ("kind", "num_items", "dim", "nlist")}
        declared = layout_mismatch(path, **layout) if matches else None
        loaded = ItemVectorIndex.load(path, nprobe) if matches and declared is None else None
    except (OSError, RuntimeError) as error:  # FAISS raises RuntimeError for a file it cannot parse
        log.warning("faiss.path=%s: cannot read the index (%s); rebuilding the index", _shown(path), first_line(error))
        return None
    if declared is not None:
        log.warning(
            "faiss.path=%s holds %s, though %s records %d vectors of width %d; rebuilding the index without reading it",
            _shown(path),
            declared,
            _beside(path, ".json").name,
            built_from["num_items"],
            built_from["dim"],
        )
        return None
    if loaded is None:
        log.warning("faiss.path=%s changed since %s was written; rebuilding the index", _shown(path), _beside(path, ".json").name)
        return None
    mismatch = _content_mismatch(loaded.index, vectors, built_from)
    if mismatch is not None:
        log.warning(
            "faiss.path=%s holds %s, though %s says otherwise; rebuilding the index", _shown(path), mismatch, _beside(path, ".json").name
        )
        return None
    return loaded


def _content_mismatch(index: Any, vectors: np.ndarray, built_from: dict[str, Any]) -> str | None:
    """What in `index` differs from an inner-product index of `vectors` of the recorded kind, or None.

    Hashes only tie the file to its sidecar, and both can be swapped together (another run's pair,
    the hash edited in): the index's own vectors are the proof. One bulk copy, no per-item loop.
    """
    faiss = import_faiss()
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return "an index that does not rank by inner product"
    expected = faiss.IndexIVF if built_from["kind"] == "ivf" else faiss.IndexFlat
    if not isinstance(index, expected):
        return f"an index of type {type(index).__name__}, not {built_from['kind']}"
    if built_from["kind"] == "ivf":
        if index.nlist != built_from["nlist"]:
            return f"an IVF index of {index.nlist} lists, not {built_from['nlist']}"
        index.make_direct_map()  # reconstructing by row needs it
    try:
        stored = index.reconstruct_n(0, index.ntotal)
    except RuntimeError as error:  # vectors stored in a form that cannot be read back
        return f"an index whose vectors cannot be read back ({first_line(error)})"
    return None if np.array_equal(stored, vectors) else "other item vectors than this run's"


def _writable_file(path: Path) -> Path:
    if path.is_dir():
        raise ConfigError(f"faiss.path={_shown(path)}: is a folder; give a file path such as {_shown(path / 'items.faiss')}")
    if not path.parent.is_dir():
        raise ConfigError(f"faiss.path={_shown(path)}: folder {_shown(path.parent)} does not exist; create it or pick another path")
    if path.exists() and not path.is_file():  # reading a pipe would block; replacing a device node loses it
        raise ConfigError(f"faiss.path={_shown(path)}: is not a regular file (a device, pipe or socket); pick another path")
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
    return quote(value, MAX_SHOWN)


def _float32(vectors: Tensor) -> np.ndarray:
    return np.ascontiguousarray(vectors.detach().float().cpu().numpy())
