"""Reductions of a batch along its short axis: row maxima and row sums of Z (K, m), column
sums of dZ (K, m).

numpy reduces a C-ordered (K, m) array along its contiguous axis one short row at a time:
with 10 outputs and 256 samples, Z.max(axis=1) took 20 us and Z.sum(axis=1) 6 us on this
machine, against 2.7 us for the maxima of a transposed copy and 1.5 us for the matrix-vector
product Z @ ones (numpy 2.4, OpenBLAS; README, "Why it is fast"). So sums are BLAS
matrix-vector products with a vector of ones, and the maxima of short rows are taken column by
column over a transposed copy. Maxima are exactly numpy's; sums differ from
np.sum only in the order of the additions.

    mbtrain bench configs/bench-a.yaml        # the loss and bias gradients use these
"""

from __future__ import annotations

import functools

import numpy as np

# Row maxima go through a transposed copy for rows this short, in batches this tall:
# there the copy and a reduction over contiguous columns measured 2-10x faster than numpy's own
# (K 32-256, m 2-48); for 64 columns and more, or fewer than 32 rows, no faster or slower.
# (np.argmax has its own fast loop over short rows and needs none of this.)
TRANSPOSED_MAX_WIDTH = 48
TRANSPOSED_MIN_ROWS = 32


@functools.lru_cache(maxsize=32)
def ones(n: int, dtype) -> np.ndarray:
    """A read-only vector of n ones (n,), made once per size and dtype."""
    v = np.ones(n, dtype)
    v.flags.writeable = False
    return v


def _transposed(Z: np.ndarray) -> bool:
    K, m = Z.shape
    return m <= TRANSPOSED_MAX_WIDTH and K >= TRANSPOSED_MIN_ROWS


def row_max(Z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """max over each row of Z (K, m): (K,), in Z's dtype."""
    if _transposed(Z):
        return np.maximum.reduce(np.ascontiguousarray(Z.T), axis=0, out=out)
    return np.maximum.reduce(Z, axis=1, out=out)


def row_sums(Z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Sum of each row of Z (K, m): (K,) = Z @ ones(m), in Z's dtype."""
    return np.matmul(Z, ones(Z.shape[1], Z.dtype), out=out)


def column_sums(Z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Sum of each column of Z (K, m): (m,) = ones(K) @ Z, in Z's dtype (a bias gradient)."""
    return np.matmul(ones(Z.shape[0], Z.dtype), Z, out=out)
