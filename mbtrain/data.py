"""Datasets: the validation split, data checks and the minibatch iterator (file formats: mbtrain.readers).

Raw arrays stay in their stored dtype (uint8 pixels stay uint8, .npy files stay memory-mapped);
each minibatch is gathered by index into preallocated buffers and only then cast and scaled,
so no float copy of the whole dataset is ever made.

    mbtrain fit configs/mnist.yaml --set data.validation=10000
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbtrain.errors import DataError
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
        return (Dataset(self.x, self.y, self.name, self.start, cut),
                Dataset(self.x, self.y, self.name + " (validation)", cut, self.stop))

    def gather(self, rows: np.ndarray, X_out: np.ndarray, Y_out: np.ndarray) -> None:
        """Copy rows (absolute indices) into X_out (K, d) scaled to floats and Y_out (K, m)."""
        raw = self.x[rows]
        np.multiply(raw, self.scale, out=X_out, casting="unsafe") if self.scale is not None \
            else np.copyto(X_out, raw, casting="unsafe")
        targets(self.y[rows], Y_out)

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
    if y.ndim == 1:
        out.fill(0)
        out[np.arange(len(y)), y] = 1
    else:
        np.copyto(out, y, casting="unsafe")
    return out


def load(source, layers: list[int], role: str) -> Dataset:
    """A checked Dataset for `source`, fitting a network with these layer sizes."""
    x, y, name = read_source(source)
    check(x, y, name, layers, role)
    return Dataset(x, y, name)


def check(x: np.ndarray, y: np.ndarray, name: str, layers: list[int], role: str) -> None:
    """Refuse data that cannot train this network, naming the file and what was found."""
    if x.dtype.kind not in "uif" or y.dtype.kind not in "uif":
        bad = "x" if x.dtype.kind not in "uif" else "y"
        raise DataError(f"{name}: array {bad} has dtype {(x if bad == 'x' else y).dtype}, expected an "
                        f"integer or floating dtype")
    if len(x) == 0:
        raise DataError(f"{name}: {role} data is empty (0 samples)")
    if len(x) != len(y):
        raise DataError(f"{name}: x has {len(x)} samples but y has {len(y)}")
    width = int(np.prod(x.shape[1:], dtype=np.int64))
    if width != layers[0]:
        raise DataError(f"{name}: samples have {width} features (shape {x.shape[1:]}), "
                        f"but model.layers[0] = {layers[0]}")
    classes = layers[-1]
    if y.ndim == 1:
        if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
            raise DataError(f"{name}: labels y must be whole class numbers, found a fraction")
        lo, hi = y.min(), y.max()
        if lo < 0 or hi >= classes:
            raise DataError(f"{name}: labels range from {lo} to {hi}, but model.layers[-1] = {classes} "
                            f"allows labels in [0, {classes - 1}]")
    elif y.shape[1:] != (classes,):
        raise DataError(f"{name}: targets y have shape {y.shape}, expected (N,) labels or (N, {classes})")
    if x.dtype.kind == "f":
        for s in range(0, len(x), 65536):
            chunk = x[s:s + 65536]
            if not np.isfinite(chunk).all():
                bad = s + int(np.argmin(np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)))
                raise DataError(f"{name}: x has a NaN or Inf value in sample {bad}")


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled sample order of one epoch, a pure function of (seed, epoch).

    Deriving each epoch's permutation from (seed, epoch) rather than from a generator's
    running state is what makes a resumed run shuffle exactly as the uninterrupted one.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, epoch)))
    return rng.permutation(n)


class Batches:
    """Minibatches of a Dataset: a seeded permutation per epoch, gathered into reused buffers."""

    def __init__(self, data: Dataset, batch_size: int, drop_last: bool, dtype, classes: int, seed: int):
        self.data, self.batch_size, self.drop_last = data, batch_size, drop_last
        self.dtype, self.classes, self.seed = np.dtype(dtype), classes, seed
        self._buffers = {}

    def steps_per_epoch(self) -> int:
        n, K = len(self.data), self.batch_size
        return n // K if self.drop_last else -(-n // K)

    def epoch(self, epoch: int, first_step: int = 0):
        """Yield (X (K, d), Y (K, m)) for each step of the epoch from `first_step` on.

        The arrays are reused buffers: they are valid until the next batch is requested.
        """
        order = self.data.start + epoch_order(self.seed, epoch, len(self.data))
        for step in range(first_step, self.steps_per_epoch()):
            rows = order[step * self.batch_size:(step + 1) * self.batch_size]
            X, Y = self._buffer(len(rows))
            self.data.gather(rows, X, Y)
            yield X, Y

    def _buffer(self, K: int):
        if K not in self._buffers:
            self._buffers[K] = (np.empty((K, self.data.features), self.dtype),
                                np.empty((K, self.classes), self.dtype))
        return self._buffers[K]
