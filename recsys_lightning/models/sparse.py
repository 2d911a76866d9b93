"""Sparse matrices held by models: the training matrix of closed-form models, feature matrices of feature-aware ones."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


def empty_sparse(num_rows: int, num_columns: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """An all-zero [num_rows, num_columns] sparse COO matrix: the state of a model not fitted yet."""
    indices, values = torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=dtype)
    return torch.sparse_coo_tensor(indices, values, (num_rows, num_columns), check_invariants=True)


def sparse_rows(matrix: Tensor, rows: Tensor) -> Tensor:
    """Rows `rows` of the coalesced sparse COO `matrix` as a coalesced sparse float [len(rows), columns] matrix.

    A coalesced matrix is sorted by row, so two `searchsorted` find each row's entries: the cost follows
    the rows asked for, where `index_select` scans every entry of the matrix.
    """
    entry_rows, entry_columns = matrix.indices()
    starts = torch.searchsorted(entry_rows, rows)
    counts = torch.searchsorted(entry_rows, rows, right=True) - starts
    out_rows = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts)
    first_out = torch.cumsum(counts, 0) - counts
    positions = torch.repeat_interleave(starts - first_out, counts) + torch.arange(len(out_rows), device=rows.device)
    indices = torch.stack([out_rows, entry_columns[positions]])
    values = matrix.values()[positions].float()
    # Built from a coalesced matrix, so valid by construction: no invariant check (and no torch warning that none ran).
    return torch.sparse_coo_tensor(indices, values, (len(rows), matrix.shape[1]), is_coalesced=True, check_invariants=False)


@contextmanager
def csr_kernels() -> Iterator[None]:
    """Around sparse products: torch computes them in CSR kernels and warns, once, that those are beta,
    which tells a user nothing they can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        yield
