"""What a FAISS index file declares, read before FAISS reads it.

`faiss.read_index` sizes each buffer by the length the file declares and only then reads it, so a
4 KiB file can make it allocate gigabytes (FAISS's own cap is 1 TiB). The two layouts this project
writes, `IndexFlatIP` and `IndexIVFFlat` over an `IndexFlatIP` quantizer, are walked here field by
field: every count and length must be what the sidecar's item count, width and nlist imply, and the
file must end exactly where those vectors end. Nothing read is held but nlist list sizes.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

FLAT, IVF_FLAT, INVERTED_LISTS = b"IxFI", b"IwFl", b"ilar"
KNOWN_TYPES = {FLAT: "a flat inner-product", b"IxF2": "a flat L2", IVF_FLAT: "an IVF flat"}
FULL_SIZES, SPARSE_SIZES = b"full", b"sprs"  # how FAISS writes the list sizes: all of them, or (list, size) pairs
HEADER = struct.Struct("<iqqqBi")  # d, ntotal, two unused words, is_trained, metric_type
COUNT = struct.Struct("<Q")  # size_t fields and vector lengths
METRIC_INNER_PRODUCT = 0
FLOAT_BYTES, ID_BYTES = 4, 8


class LayoutMismatch(Exception):
    """What in the file differs from the index the sidecar describes (a phrase for a log line)."""


def layout_mismatch(path: Path, kind: str, num_items: int, dim: int, nlist: int | None) -> str | None:
    """What in the index file at `path` differs from a `kind` ("flat" or "ivf") inner-product index of
    `num_items` vectors of width `dim` (in `nlist` lists), or None when every declared size fits them."""
    try:
        with open(path, "rb") as handle:
            reader = _Reader(handle, os.fstat(handle.fileno()).st_size)
            if kind == "flat":
                _flat(reader, num_items, dim, "index")
            else:
                _ivf_flat(reader, num_items, dim, nlist or 0)
            if reader.left:
                raise LayoutMismatch(f"{reader.left:,} bytes after the index's last vector")
    except LayoutMismatch as mismatch:
        return str(mismatch)
    return None


class _Reader:
    """Exact reads from a file of known size, each checked against the bytes left before it is made."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle, self.left = handle, size

    def bytes(self, count: int, what: str) -> bytes:
        if count > self.left:
            raise LayoutMismatch(f"a file that ends {self.left:,} bytes into {what} of {count:,} bytes")
        self.left -= count
        return self.handle.read(count)

    def skip(self, count: int, what: str) -> None:
        if count > self.left:
            raise LayoutMismatch(f"a file that ends {self.left:,} bytes into {what} of {count:,} bytes")
        self.left -= count
        self.handle.seek(count, os.SEEK_CUR)

    def count(self, what: str) -> int:
        return COUNT.unpack(self.bytes(COUNT.size, what))[0]

    def expect(self, value: int, expected: int, what: str) -> None:
        """`what` holds a {} for the value found, e.g. 'an IVF index of {} lists'."""
        if value != expected:
            raise LayoutMismatch(f"{what.format(f'{value:,}')}, not {expected:,}")


def _header(reader: _Reader, fourcc: bytes, num_vectors: int, dim: int, name: str) -> None:
    found = reader.bytes(4, f"the {name}'s type")
    if found != fourcc:
        kind = f"{KNOWN_TYPES[found]} {name}" if found in KNOWN_TYPES else f"an {name} of unknown type {found!r}"
        raise LayoutMismatch(f"{kind}, not {KNOWN_TYPES[fourcc]} one")
    d, ntotal, _, _, _, metric = HEADER.unpack(reader.bytes(HEADER.size, f"the {name}'s header"))
    reader.expect(d, dim, f"an {name} of width {{}}")
    reader.expect(ntotal, num_vectors, f"an {name} of {{}} vectors")
    if metric != METRIC_INNER_PRODUCT:
        raise LayoutMismatch(f"an {name} that does not rank by inner product (metric {metric})")


def _flat(reader: _Reader, num_vectors: int, dim: int, name: str) -> None:
    _header(reader, FLAT, num_vectors, dim, name)
    floats = num_vectors * dim  # FAISS records a flat index's code length in 4-byte words
    reader.expect(reader.count(f"the {name}'s code length"), floats, f"an {name} whose code vector is declared as {{}} floats")
    reader.skip(floats * FLOAT_BYTES, f"the {name}'s vectors")


def _ivf_flat(reader: _Reader, num_items: int, dim: int, nlist: int) -> None:
    _header(reader, IVF_FLAT, num_items, dim, "index")
    reader.expect(reader.count("nlist"), nlist, "an IVF index of {} lists")
    reader.count("nprobe")  # a setting, not a size: serving sets its own
    _flat(reader, nlist, dim, "IVF quantizer")
    reader.expect(reader.bytes(1, "the direct map's type")[0], 0, "a direct map of type {}")
    reader.expect(reader.count("the direct map's length"), 0, "a direct map of {} entries")
    if reader.bytes(4, "the inverted lists' type") != INVERTED_LISTS:
        raise LayoutMismatch("inverted lists of another type than FAISS's in-memory array lists")
    reader.expect(reader.count("the inverted lists' count"), nlist, "{} inverted lists")
    code_size = dim * FLOAT_BYTES
    reader.expect(reader.count("the inverted lists' code size"), code_size, "inverted lists of code size {}")
    sizes = _list_sizes(reader, nlist, num_items)
    reader.expect(int(sizes.sum()), num_items, "inverted lists holding {} vectors")
    reader.skip(num_items * (code_size + ID_BYTES), "the inverted lists' vectors and ids")


def _list_sizes(reader: _Reader, nlist: int, num_items: int) -> np.ndarray:
    """Every list's size, each at most `num_items`: the list sizes FAISS sizes its buffers by."""
    mode = reader.bytes(4, "the list sizes' format")
    sizes = np.zeros(nlist, dtype=np.uint64)
    if mode == FULL_SIZES:
        reader.expect(reader.count("the list sizes' length"), nlist, "{} list sizes")
        sizes = np.frombuffer(reader.bytes(nlist * COUNT.size, "the list sizes"), dtype="<u8")
    elif mode == SPARSE_SIZES:
        length = reader.count("the list sizes' length")
        if length % 2 or length > 2 * nlist:
            raise LayoutMismatch(f"{length:,} sparse list-size fields for {nlist:,} lists")
        pairs = np.frombuffer(reader.bytes(length * COUNT.size, "the list sizes"), dtype="<u8").reshape(-1, 2)
        if len(pairs) and int(pairs[:, 0].max()) >= nlist:
            raise LayoutMismatch(f"a list size for list {int(pairs[:, 0].max()):,} of {nlist:,}")
        sizes[pairs[:, 0].astype(np.int64)] = pairs[:, 1]
    else:
        raise LayoutMismatch(f"list sizes in an unknown format {mode!r}")
    if len(sizes) and int(sizes.max()) > num_items:
        raise LayoutMismatch(f"an inverted list declaring {int(sizes.max()):,} vectors, more than the {num_items:,} items")
    return sizes
