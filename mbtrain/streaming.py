"""Bounded-memory passes over arrays that may be memory-mapped files.

Reading a memory-mapped file maps its pages into the process: left alone, the resident
set grows to the whole file even though the kernel could drop those pages at any time.
`release` hands the pages back (madvise MADV_DONTNEED: the page cache keeps them, so a
re-read is cheap), `chunks` walks an array a few MiB at a time, releasing as it goes, and
`RowReader` reads a minibatch's scattered rows with pread, never mapping them. This is
what keeps peak RSS flat as the dataset grows (benchmarks/memory.py).

    mbtrain data info data/big/        # one streaming pass over x.npy and y.npy
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from mbtrain.errors import DataError

CHUNK_BYTES = 16 << 20          # bytes read per chunk of a streaming pass


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


class RowReader:
    """Reads rows of a memory-mapped array with pread instead of through the mapping.

    A random row touched through a mapping maps the whole large folio around it (2 MiB on
    this kernel), so a few minibatches of a full shuffle would map most of the file into the
    resident set. pread copies just the bytes asked for; sorted rows that follow each other
    in the file are read with one call. (A loop over runs of rows, for I/O only.)
    """

    def __init__(self, a: np.ndarray):
        self.path, self.offset = a.filename, int(a.offset)
        self.row_shape, self.dtype = a.shape[1:], a.dtype
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * a.dtype.itemsize
        self.file = open(self.path, "rb", buffering=0)          # closed when the reader is collected

    @staticmethod
    def for_array(a: np.ndarray) -> "RowReader | None":
        """A reader when `a` is a whole C-ordered memory-mapped array of its file, else None."""
        mm = getattr(a, "_mmap", None)
        if mm is None or not a.flags.c_contiguous or getattr(a, "filename", None) is None:
            return None
        start = np.frombuffer(mm, np.uint8).ctypes.data + int(a.offset) % mmap.ALLOCATIONGRANULARITY
        return RowReader(a) if a.ctypes.data == start else None      # a view that starts elsewhere

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The rows (K,) of the array, as a (K, *row_shape) array; ascending runs take one call each."""
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)                 # (K, row_bytes)
        cuts = np.flatnonzero(np.diff(rows) != 1) + 1
        for s, e in zip(np.r_[0, cuts], np.r_[cuts, len(rows)]):
            want = (e - s) * self.row_bytes
            got = os.preadv(self.file.fileno(), [flat[s:e]], self.offset + int(rows[s]) * self.row_bytes)
            if got != want:
                raise DataError(f"{self.path}: rows {rows[s]}..{rows[e - 1]}: read {got} bytes, expected "
                                f"{want} (was the file truncated while training?)")
        return out
