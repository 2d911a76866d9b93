"""Every random stream's seed, derived from (seed, stream, rank, epoch) by one hash.

Arithmetic seeds such as `seed * P + epoch` collide across streams: the batch order of epoch e + 1
and the negatives of epoch e once shared a seed, so they drew from one sequence. Hashing the whole
tuple gives each stream its own sequence while one `seed` still fixes them all.
"""

from __future__ import annotations

import hashlib

SEED_BITS = 63  # non-negative and within what torch, numpy and Lightning accept


def stream_seed(seed: int, stream: str, rank: int = 0, epoch: int = 0) -> int:
    """The seed of `stream` (e.g. "negatives") for one process (`rank`) at one `epoch` (or chunk)."""
    key = f"{seed}\x1f{stream}\x1f{rank}\x1f{epoch}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> (64 - SEED_BITS)
