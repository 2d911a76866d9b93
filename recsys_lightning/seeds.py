"""Every random stream's seed, derived from (seed, stream, rank, epoch) by one hash.

Arithmetic seeds such as `seed * P + epoch` collide across streams: the batch order of epoch e + 1
and the negatives of epoch e once shared a seed, so they drew from one sequence. Hashing the whole
tuple gives each stream its own sequence while one `seed` still fixes them all.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

SEED_BITS = 63  # non-negative and within what torch, numpy and Lightning accept


def stream_seed(seed: int, stream: str, rank: int = 0, epoch: int = 0) -> int:
    """The seed of `stream` (e.g. "negatives") for one process (`rank`) at one `epoch` (or chunk)."""
    key = f"{seed}\x1f{stream}\x1f{rank}\x1f{epoch}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> (64 - SEED_BITS)


_GOLDEN = 0x9E3779B97F4A7C15 - 2**64  # splitmix64's constants as signed int64 (torch has no uint64 arithmetic)
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 (torch's `>>` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: Tensor) -> Tensor:
    """splitmix64's finaliser (Steele et al. 2014), wrapping int64 arithmetic."""
    x = x + _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def keyed_uniform(seed: int, keys: tuple[Tensor, ...], count: int) -> Tensor:
    """[len(keys[0]), count] float64 uniforms in [0, 1), each a hash of (seed, the row's keys, its column):
    a draw depends on what it is for, not on which process draws it or what was drawn before."""
    state = torch.full_like(keys[0], seed % 2**63, dtype=torch.int64)
    for key in keys:
        state = _mix(state ^ key.long())
    state = _mix(state.unsqueeze(1) ^ torch.arange(count, device=state.device))
    return _shift_right(state, 11).double() * 2.0**-53
