"""Datasets: the validation split, normalization, and the minibatch iterator (formats: mbtrain.readers).

Raw arrays stay in their stored dtype (uint8 pixels stay uint8, .npy files stay memory-mapped);
each minibatch is gathered by index into preallocated buffers and only then cast and scaled,
so no float copy of the whole dataset is ever made, and the pages a gather maps are handed
back every few MiB (mbtrain.streaming), so memory does not grow with the file.

    mbtrain fit configs/mnist.yaml --set data.validation=10000
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np

from mbtrain import flat, streaming
from mbtrain import prefetch as prefetch_module
from mbtrain.checks import check  # noqa: F401  (data.check stays importable)
from mbtrain.errors import DataError
from mbtrain.normalize import Normalization
from mbtrain.order import EpochOrder, epoch_order  # noqa: F401
# The file formats live in mbtrain.readers; re-exported so mbtrain.data.read_* keeps working.
from mbtrain.readers import (IDX_DTYPES, labels_beside, read_array, read_idx, read_npy,  # noqa: F401
                             read_npz, read_source)


# ---------------------------------------------------------------- datasets

@dataclass
class Dataset:
    """Rows [start, stop) of raw arrays x (N, ...) and y (N,) or (N, m)."""

    x: np.ndarray
    y: np.ndarray
    name: str
    start: int = 0
    stop: int | None = None

    def __post_init__(self):
        if self.stop is None:
            self.stop = len(self.x)
        self.x = self.x.reshape(len(self.x), -1) if self.x.ndim != 2 else self.x
        self.scale = 1.0 / 255.0 if self.x.dtype == np.uint8 else None
        self.normalization: Normalization | None = None      # set from the training split
        # batches of a memory-mapped file are read with pread, so they never map the file
        self._x_rows, self._y_rows = streaming.RowReader.for_array(self.x), streaming.RowReader.for_array(self.y)

    def entry_bound(self) -> float | None:
        """A bound on |x| for every entry of every batch gathered from here, known without a pass
        over the data, or None: uint8 pixels scale into [0, 1], and the per-feature normalization
        x' = (x - shift) * scale maps [0, 1] into max_j max(|shift_j|, |1 - shift_j|) |scale_j|.
        With a margin of 0.1 % for the rounding of the float transform (a guard's use, not a
        statistic: mbtrain.guard.batch_squares).
        """
        if self.scale is None:
            return None
        bound = 1.0
        if self.normalization is not None:
            n = self.normalization
            bound = float(np.max(np.maximum(np.abs(n.shift), np.abs(1.0 - n.shift)) * np.abs(n.scale)))
        return bound * 1.001

    @property
    def file_backed(self) -> bool:
        """True when batches are read from a file (memory-mapped .npy or raw IDX), not from memory."""
        return self._x_rows is not None

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def features(self) -> int:
        return self.x.shape[1]

    def split(self, validation) -> tuple["Dataset", "Dataset | None"]:
        """(train, validation) with the validation rows taken from the end."""
        n = len(self)
        count = validation if isinstance(validation, int) else int(round(validation * n))
        if count == 0:
            return self, None
        if count >= n:
            raise DataError(f"{self.name}: data.validation = {validation} leaves no training samples "
                            f"(the training source has {n})")
        cut = self.stop - count
        train = Dataset(self.x, self.y, self.name, self.start, cut)
        val = Dataset(self.x, self.y, self.name + " (validation)", cut, self.stop)
        train.normalization = val.normalization = self.normalization
        return train, val

    def gather(self, rows: np.ndarray, X_out: np.ndarray, Y_out: np.ndarray) -> None:
        """Copy rows (absolute indices) into X_out (K, d) scaled to floats and Y_out (K, m)."""
        raw = self._x_rows.read(rows) if self._x_rows else self.x[rows]
        np.copyto(X_out, raw, casting="unsafe")
        if self.scale is not None:       # pixels / 255 in X_out's dtype: no float64 temporary
            X_out /= 255                 # (a mixed uint8 / float32 divide measured slower)
        if self.normalization is not None:
            self.normalization.apply(X_out)
        try:
            targets(self._y_rows.read(rows) if self._y_rows else self.y[rows], Y_out)
        except IndexError:               # only reachable when data.check: false skipped the label scan
            raise DataError(f"{self.name}: a label among rows {int(rows.min())}..{int(rows.max())} is "
                            f"outside [0, {Y_out.shape[1]}); data.check: false skipped the scan that "
                            f"names it") from None

    def chunks(self, batch_size: int, dtype, classes: int):
        """(X, Y) in order, batch_size rows at a time (for evaluation)."""
        for s in range(self.start, self.stop, batch_size):
            rows = np.arange(s, min(s + batch_size, self.stop))
            X = np.empty((len(rows), self.features), dtype)
            Y = np.empty((len(rows), classes), dtype)
            self.gather(rows, X, Y)
            yield X, Y


def targets(y: np.ndarray, out: np.ndarray) -> np.ndarray:
    """One-hot rows for integer labels y (K,), or y itself when it is already (K, m)."""
    if y.ndim == 1:                      # row y of the identity matrix, in one gather
        _identity(out.shape[1], out.dtype).take(y.astype(np.intp, copy=False), axis=0, out=out)
    else:
        np.copyto(out, y, casting="unsafe")
    return out


@functools.lru_cache(maxsize=8)
def _identity(m: int, dtype) -> np.ndarray:
    """The (m, m) identity matrix, made once per size and dtype (read-only: it is shared)."""
    eye = np.eye(m, dtype=dtype)
    eye.flags.writeable = False
    return eye


def load(source, layers: list[int], role: str, options=None, normalization=None,
         regression: bool = False) -> Dataset:
    """A checked Dataset for `source`, fitting a network with these layer sizes.

    options: the config's data section (CSV columns, data.check); normalization: the
    transform to apply to every batch (from the training split or a checkpoint);
    regression: y holds target values, not class labels, and a 1-D y becomes one column (N, 1).
    """
    csv_label, csv_header = (options.csv_label, options.csv_header) if options else (0, "auto")
    x, y, name = read_source(source, csv_label=csv_label, csv_header=csv_header)
    if regression and y.ndim == 1:
        y = y.reshape(-1, 1)
    check(x, y, name, layers, role, scan=options.check if options else True)
    dataset = Dataset(x, y, name)
    dataset.normalization = normalization
    return dataset


def load_for_checkpoint(ckpt, source, role: str = "evaluation") -> Dataset:
    """Data to evaluate or predict with checkpoint `ckpt`: its CSV options, checks and normalization.

    eval and predict call this, so they see exactly the transform the network was trained with.
    """
    cfg = ckpt.config
    return load(source, cfg.model.layers, role, cfg.data, getattr(ckpt, "normalization", None),
                regression=cfg.model.output == "identity_mse")


CHUNK_BYTES = 1 << 18      # batch data gathered per call: small batches share the per-call costs
# ... and per hand-over when a thread prefetches: one of A's batches per hand-over gained 3 %,
# ten 12 % (README, Data at scale; each hand-over wakes the thread, which then takes the GIL
# between its numpy calls)
PREFETCH_CHUNK_BYTES = 1 << 21


class Batches:
    """Minibatches of a Dataset in the epoch's seeded order (mbtrain.order), gathered into reused buffers.

    With prefetch, a worker (mbtrain.prefetch: a forked process, or a thread) gathers the next
    batches while the current one trains; the batches are identical either way. `wait_seconds`
    adds up the time the training loop spent waiting for batches (the loader's share of the
    step, for `mbtrain bench`).
    """

    def __init__(self, data: Dataset, batch_size: int, drop_last: bool, dtype, classes: int, seed: int,
                 shuffle: str = "full", block_rows: int = 4096, buffer_rows: int = 65536,
                 prefetch: bool = False, prefetch_worker: str = "auto"):
        self.data, self.batch_size, self.drop_last = data, batch_size, drop_last
        self.dtype, self.classes, self.seed = np.dtype(dtype), classes, seed
        self.shuffle, self.block_rows, self.buffer_rows = shuffle, block_rows, buffer_rows
        self.prefetch = prefetch
        self.worker = prefetch_module.worker(prefetch_worker) if prefetch else None   # "process", "thread"
        self.wait_seconds = 0.0
        self._buffers = {}
        self._ring = None                   # a process worker's slots, in shared memory
        self._forked = None                 # ... and the worker (mbtrain.prefetch.Forked)

    def steps_per_epoch(self) -> int:
        n, K = len(self.data), self.batch_size
        return n // K if self.drop_last else -(-n // K)

    def batches_per_chunk(self) -> int:
        """Batches gathered together (about CHUNK_BYTES of batch data, PREFETCH_CHUNK_BYTES when a thread
        prefetches), so small batches cost a few calls."""
        per_batch = self.batch_size * self.data.features * self.dtype.itemsize
        return max(1, (PREFETCH_CHUNK_BYTES if self.prefetch else CHUNK_BYTES) // max(per_batch, 1))

    def row_chunks(self, epoch: int, first_step: int = 0, per_chunk: int | None = None):
        """The absolute row indices of up to `per_chunk` consecutive batches at a time, each
        batch's rows sorted so reads go forward in the file (the last batch may be shorter)."""
        n, K = len(self.data), self.batch_size
        per_chunk = per_chunk or self.batches_per_chunk()
        order = EpochOrder(self.shuffle, n, self.seed, epoch, self.block_rows, self.buffer_rows)
        steps = self.steps_per_epoch()
        for first in range(first_step, steps, per_chunk):
            lo, hi = first * K, min(min(first + per_chunk, steps) * K, n)
            rows = order.rows(lo, hi)
            if self.shuffle != "none":      # same batch, same mean gradient; forward reads only
                rows = rows.copy()          # (order.rows may hand out a read-only view)
                full = (hi - lo) // K * K
                rows[:full].reshape(-1, K).sort(axis=1)
                rows[full:].sort()
            if self.data.start:
                rows += self.data.start
            yield rows

    def epoch(self, epoch: int, first_step: int = 0):
        """Yield (X (K, d), Y (K, m)) for each step of the epoch from `first_step` on.

        The arrays are views of reused buffers: they are valid until the next batch is requested.
        Batches are gathered batches_per_chunk() at a time (identical values either way).
        """
        jobs = self.row_chunks(epoch, first_step)
        clock = time.perf_counter
        if not self.prefetch:
            for rows in jobs:
                waited = clock()
                batches = self._fill(rows, 0)
                self.wait_seconds += clock() - waited
                yield from batches
            return
        if self.worker == "process":
            if self._forked is None:        # the ring before the fork: the child writes these pages
                self._shared_ring()
                self._forked = prefetch_module.Forked(prefetch_module.DEPTH)   # as many slots as the ring
            source = self._forked.run(self.row_chunks, (epoch, first_step), self._fill_slot, self._views)
        else:
            source = prefetch_module.prefetched(jobs, self._fill)
        try:
            waited = clock()
            for batches in source:
                self.wait_seconds += clock() - waited
                yield from batches
                waited = clock()
        finally:
            source.close()                  # stops the worker when the loop ends early

    def _fill(self, rows: np.ndarray, slot: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Gather a chunk's rows into buffer slot `slot` in one go; (X, Y) views, one per batch."""
        X, Y = self._buffer(len(rows), slot)
        self.data.gather(rows, X, Y)
        return self._split(X, Y)

    def _split(self, X: np.ndarray, Y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """A chunk's (X, Y) as views of batch_size rows each (the last may be shorter)."""
        K = self.batch_size
        return [(X[at:at + K], Y[at:at + K]) for at in range(0, len(X), K)]

    def close(self) -> None:
        """Stop a prefetching child process now (it also stops with this object, or with this process)."""
        if self._forked is not None:
            self._forked.close()

    def _fill_slot(self, rows: np.ndarray, slot: int) -> int:
        """Gather a chunk's rows into shared ring slot `slot` (a process worker's job); its row count."""
        X, Y = self._slot(slot, len(rows))
        self.data.gather(rows, X, Y)
        return len(rows)

    def _views(self, slot: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(X, Y) views of the n rows in shared ring slot `slot`, one per batch."""
        return self._split(*self._slot(slot, n))

    def _shared_ring(self) -> None:
        """The process worker's ring: depth + 2 slots of a chunk's rows (X, Y), in shared memory."""
        rows = self.batches_per_chunk() * self.batch_size
        specs = [((rows, self.data.features), self.dtype), ((rows, self.classes), self.dtype)]
        arrays = prefetch_module.shared_arrays(specs * (prefetch_module.DEPTH + 2))
        self._ring = list(zip(arrays[0::2], arrays[1::2]))

    def _slot(self, slot: int, n: int):
        X, Y = self._ring[slot]
        return X[:n], Y[:n]

    def _buffer(self, n: int, slot: int):
        if (n, slot) not in self._buffers:
            self._buffers[n, slot] = (flat.aligned((n, self.data.features), self.dtype),
                                      flat.aligned((n, self.classes), self.dtype))
        return self._buffers[n, slot]


def endless(batches):
    """(X, Y) from epoch 0, 1, 2, ... without end: for benchmarks that time a number of steps."""
    epoch = 0
    while True:
        yield from batches.epoch(epoch)
        epoch += 1
