"""Data file formats: MNIST IDX (gz or raw), .npz (x, y), a pair of .npy files (memory-mapped), CSV.

Each reader returns raw arrays in their stored dtype, never unpickles, and raises DataError
naming the file and what was found; `read_source` turns a config source into (x, y, name).

    mbtrain fit configs/mnist.yaml --set data.train=data/mnist/train-images-idx3-ubyte.gz
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from mbtrain.csvfile import read_csv
from mbtrain.errors import DataError

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


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
    expected = head_len + math.prod(dims) * dtype.itemsize        # Python ints: no overflow
    if size != expected:
        raise DataError(f"{path}: IDX header says dimensions {dims} of {dtype.name} "
                        f"({expected} bytes with header), but the file holds {size} bytes")
    try:
        if gz:
            return np.frombuffer(blob, dtype=dtype, offset=head_len).reshape(dims)
        if math.prod(dims) == 0:
            return np.empty(dims, dtype=dtype)
    except ValueError:                          # e.g. (0, 2**31, 2**31): numpy refuses the shape
        raise DataError(f"{path}: IDX header gives dimensions {dims}, too large for an array") from None
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


def is_csv(path: str) -> bool:
    return path.lower().endswith((".csv", ".csv.gz"))


def read_source(source, csv_label=0, csv_header: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """(x, y, name) for a config source: a path or a mapping {x: PATH, y: PATH}.

    A path is a folder holding x.npy and y.npy, an .npz, an IDX images file (labels beside
    it), or a .csv / .csv.gz file (label column csv_label, header csv_header: auto|yes|no).
    """
    if isinstance(source, dict):
        return read_array(source["x"]), read_array(source["y"]), source["x"]
    path = source
    if os.path.isdir(path):
        x_npy, y_npy = os.path.join(path, "x.npy"), os.path.join(path, "y.npy")
        if os.path.exists(x_npy) and os.path.exists(y_npy):
            return read_npy(x_npy), read_npy(y_npy), path
        raise DataError(f"{path}: folder holds no x.npy and y.npy")
    _must_be_file(path)
    if is_csv(path):
        x, y = read_csv(path, csv_label, csv_header)
        return x, y, path
    with open(path, "rb") as f:
        head = f.read(6)
    if head[:4] == b"PK\x03\x04" or path.endswith(".npz"):
        x, y = read_npz(path)
        return x, y, path
    if head == b"\x93NUMPY":
        raise DataError(f"{path}: a single .npy file holds no labels; give a folder with x.npy and "
                        f"y.npy, or the mapping {{x: X.npy, y: Y.npy}}")
    return read_idx(path), read_array(labels_beside(path)), path
