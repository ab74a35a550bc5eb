"""Bounded-memory passes over arrays that may be memory-mapped files.

Reading a memory-mapped file maps its pages into the process: left alone, the resident
set grows to the whole file even though the kernel could drop those pages at any time.
`release` hands the pages back (madvise MADV_DONTNEED: the page cache keeps them, so a
re-read is cheap), and `chunks` walks an array a few MiB at a time, releasing as it goes.
This is what keeps peak RSS flat as the dataset grows (benchmarks/memory.py).

    mbtrain data info data/big/        # one streaming pass over x.npy and y.npy
"""

from __future__ import annotations

import mmap

import numpy as np

CHUNK_BYTES = 16 << 20          # bytes read per chunk of a streaming pass
RELEASE_BYTES = 32 << 20        # pages touched by batch gathers between two releases
PAGE = mmap.PAGESIZE


def is_mapped(a: np.ndarray) -> bool:
    """True when `a` views a memory-mapped file."""
    return getattr(a, "_mmap", None) is not None


def release(a: np.ndarray) -> None:
    """Drop the pages of the file `a` maps from this process's resident set (no-op otherwise)."""
    mm = getattr(a, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):      # a closed map or an unsupported platform: nothing to free
            pass


def rows_per_chunk(a: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> int:
    row_bytes = max(1, int(np.prod(a.shape[1:], dtype=np.int64)) * a.dtype.itemsize)
    return max(1, chunk_bytes // row_bytes)


def chunks(a: np.ndarray, start: int = 0, stop: int | None = None, chunk_bytes: int = CHUNK_BYTES):
    """Yield (first row, a[first row:...]) over rows [start, stop), releasing mapped pages after each."""
    stop = len(a) if stop is None else stop
    step = rows_per_chunk(a, chunk_bytes)
    for s in range(start, stop, step):
        yield s, a[s:min(s + step, stop)]
        release(a)


class Releaser:
    """Counts the pages that row gathers touch and releases the mapping every RELEASE_BYTES."""

    def __init__(self, *arrays: np.ndarray):
        self.arrays = [a for a in arrays if is_mapped(a)]
        # a gathered row touches at least one page, wherever it sits
        self.cost = [max(PAGE, int(np.prod(a.shape[1:], dtype=np.int64)) * a.dtype.itemsize)
                     for a in self.arrays]
        self.touched = [0] * len(self.arrays)

    def gathered(self, rows: int) -> None:
        for i, a in enumerate(self.arrays):
            self.touched[i] += rows * self.cost[i]
            if self.touched[i] >= RELEASE_BYTES:
                release(a)
                self.touched[i] = 0
