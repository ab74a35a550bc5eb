"""Datasets: reading IDX / .npz / .npy sources, the validation split, and the minibatch iterator.

Raw arrays stay in their stored dtype (uint8 pixels stay uint8, .npy files stay memory-mapped);
each minibatch is gathered by index into preallocated buffers and only then cast and scaled,
so no float copy of the whole dataset is ever made.

    mbtrain fit configs/mnist.yaml --set data.validation=10000
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass

import numpy as np

from mbtrain.errors import DataError

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# ---------------------------------------------------------------- readers

def read_idx(path: str) -> np.ndarray:
    """An IDX file (gzipped or raw) as an array; raw files are memory-mapped.

    Checks the magic number (0x0000, dtype code, ndim), the dimensions and that the
    file size matches the header.
    """
    gz = _is_gzip(path)
    try:
        if gz:
            with gzip.open(path, "rb") as f:
                blob = f.read()
            header = blob[:4]
        else:
            with open(path, "rb") as f:
                header = f.read(4)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read gzipped IDX file: {e}") from None
    if len(header) < 4 or header[0] != 0 or header[1] != 0 or header[2] not in IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file: magic number {header.hex() or '(empty)'}, "
                        f"expected 0000 followed by a type code (08, 09, 0b, 0c, 0d, 0e) and ndim")
    dtype, ndim = np.dtype(IDX_DTYPES[header[2]]), header[3]
    if ndim == 0:
        raise DataError(f"{path}: IDX header gives 0 dimensions, expected at least 1")
    size = len(blob) if gz else os.path.getsize(path)
    head_len = 4 + 4 * ndim
    if size < head_len:
        raise DataError(f"{path}: truncated IDX header: {size} bytes, header needs {head_len}")
    dims_raw = blob[4:head_len] if gz else _read_at(path, 4, 4 * ndim)
    dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
    expected = head_len + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        raise DataError(f"{path}: IDX header says dimensions {dims} of {dtype.name} "
                        f"({expected} bytes with header), but the file holds {size} bytes")
    if gz:
        return np.frombuffer(blob, dtype=dtype, offset=head_len).reshape(dims)
    if int(np.prod(dims)) == 0:
        return np.empty(dims, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=head_len, shape=dims)


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _read_at(path: str, offset: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def read_npy(path: str) -> np.ndarray:
    """A memory-mapped .npy array (never read whole, never unpickled)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read .npy file: {_first_line(e)}") from None


def read_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Arrays x and y of an .npz file (no pickled objects allowed)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x", "y") if k not in z.files]
            if missing:
                raise DataError(f"{path}: .npz holds arrays {sorted(z.files)}, expected 'x' and 'y'")
            return z["x"], z["y"]
    except DataError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zlib.error, Exception) as e:
        raise DataError(f"{path}: cannot read .npz file: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def read_array(path: str) -> np.ndarray:
    """One array from an .npy or IDX file, chosen by content."""
    _must_be_file(path)
    with open(path, "rb") as f:
        head = f.read(6)
    if head == b"\x93NUMPY":
        return read_npy(path)
    return read_idx(path)


def _must_be_file(path: str) -> None:
    if not os.path.exists(path):
        raise DataError(f"{path}: data file not found")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected a data file")


def labels_beside(images_path: str) -> str:
    """The MNIST labels file next to an images file: train-images-idx3 -> train-labels-idx1."""
    folder, name = os.path.split(images_path)
    for a, b in (("images-idx3", "labels-idx1"), ("images", "labels")):
        if a in name:
            return os.path.join(folder, name.replace(a, b))
    raise DataError(f"{images_path}: cannot tell where its labels are; name the pair as "
                    f"{{x: IMAGES, y: LABELS}}")


def read_source(source) -> tuple[np.ndarray, np.ndarray, str]:
    """(x, y, name) for a config source: a path or a mapping {x: PATH, y: PATH}."""
    if isinstance(source, dict):
        return read_array(source["x"]), read_array(source["y"]), source["x"]
    path = source
    if os.path.isdir(path):
        x_npy, y_npy = os.path.join(path, "x.npy"), os.path.join(path, "y.npy")
        if os.path.exists(x_npy) and os.path.exists(y_npy):
            return read_npy(x_npy), read_npy(y_npy), path
        raise DataError(f"{path}: folder holds no x.npy and y.npy")
    _must_be_file(path)
    with open(path, "rb") as f:
        head = f.read(6)
    if head[:4] == b"PK\x03\x04" or path.endswith(".npz"):
        x, y = read_npz(path)
        return x, y, path
    if head == b"\x93NUMPY":
        raise DataError(f"{path}: a single .npy file holds no labels; give a folder with x.npy and "
                        f"y.npy, or the mapping {{x: X.npy, y: Y.npy}}")
    return read_idx(path), read_array(labels_beside(path)), path


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
