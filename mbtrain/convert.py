"""`mbtrain data convert`: CSV, IDX or .npz into the .npy pair x.npy, y.npy, streaming.

The input is read a block at a time and each block is appended to the output files, so
memory stays bounded however large the input; the result is memory-mapped by every later
run. Both files are written under temporary names and renamed into place only when whole,
and an existing x.npy / y.npy is never overwritten.

    mbtrain data convert train.csv data/train --label label
    mbtrain data convert data/mnist/train-images-idx3-ubyte.gz data/mnist-train
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zipfile
import zlib

import numpy as np

from mbtrain import readers
from mbtrain.checkpoint import fsync_dir
from mbtrain.csvfile import CsvTable
from mbtrain.errors import DataError

BLOCK_BYTES = 16 << 20


class NpyWriter:
    """An .npy file of known dtype and shape written block by block under a temporary name."""

    def __init__(self, folder: str, name: str, dtype, shape: tuple):
        self.path, self.dtype, self.shape = os.path.join(folder, name), np.dtype(dtype), shape
        fd, self.tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        self.file = os.fdopen(fd, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(self.file, header)
        self.rows = 0

    def write(self, block: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += len(block)

    def finish(self) -> None:
        if self.rows != self.shape[0]:
            raise DataError(f"{self.path}: wrote {self.rows} rows, the input announced {self.shape[0]}")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def discard(self) -> None:
        self.file.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def convert(source: str, out_dir: str, labels: str | None = None, csv_label=0, csv_header: str = "auto",
            dtype: str = "float32", label_dtype: str = "int64") -> dict:
    """Convert `source` into out_dir/x.npy and out_dir/y.npy; returns what was written.

    labels: the IDX labels file when it is not beside the images; dtype: the feature dtype
    for CSV input (IDX and .npz keep their stored dtype, in native byte order); label_dtype:
    the CSV label dtype, int64 for class labels or a float dtype for regression targets.
    """
    readers._must_be_file(source)
    _prepare(out_dir)
    if readers.is_csv(source):
        table = CsvTable(source, csv_label, csv_header)
        n = table.count()                              # a first streaming pass: the row count
        x_spec, y_spec = (np.dtype(dtype), (n, len(table.features))), (np.dtype(label_dtype), (n,))
        pairs = table.blocks(class_labels=y_spec[0].kind != "f")     # x and y blocks come together
    else:
        if source.endswith(".npz") or _head(source, 4) == b"PK\x03\x04":
            x_stream, y_stream = _npz_stream(source, "x"), _npz_stream(source, "y")
        else:
            x_stream, y_stream = _idx_stream(source), _idx_stream(labels or readers.labels_beside(source))
        (x_spec, x_blocks), (y_spec, y_blocks) = x_stream, y_stream
        pairs = _sequential(x_blocks, y_blocks)
    if x_spec[1][0] != y_spec[1][0]:
        raise DataError(f"{source}: {x_spec[1][0]} samples but {y_spec[1][0]} labels")
    if x_spec[1][0] == 0:
        raise DataError(f"{source}: holds no samples")
    _write(out_dir, x_spec, y_spec, pairs)
    return {"source": source, "out_dir": out_dir,
            "x": {"shape": list(x_spec[1]), "dtype": x_spec[0].name},
            "y": {"shape": list(y_spec[1]), "dtype": y_spec[0].name}}


def _prepare(out_dir: str) -> None:
    """Create out_dir; refuse one that already holds x.npy or y.npy."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out_dir}: cannot create the output folder: {e.strerror or e}") from None
    for name in ("x.npy", "y.npy"):
        if os.path.exists(os.path.join(out_dir, name)):
            raise DataError(f"{os.path.join(out_dir, name)}: already exists; convert into an empty folder")


def _write(out_dir: str, x_spec, y_spec, pairs) -> None:
    """Write the (x block or None, y block or None) pairs; rename both files only when both are whole."""
    writers = []
    try:
        for name, spec in (("x.npy", x_spec), ("y.npy", y_spec)):
            writers.append(NpyWriter(out_dir, name, *spec))
        for x, y in pairs:
            if x is not None:
                writers[0].write(x)
            if y is not None:
                writers[1].write(y)
        for writer in writers:
            writer.finish()
        for writer in writers:
            os.replace(writer.tmp, writer.path)
        fsync_dir(out_dir)
    except OSError as e:
        raise DataError(f"{out_dir}: cannot write: {e.strerror or e}") from None
    finally:
        for writer in writers:
            writer.discard()


def _sequential(x_blocks, y_blocks):
    """(x, None) for every x block, then (None, y) for every y block: one open input at a time."""
    for x in x_blocks:
        yield x, None
    for y in y_blocks:
        yield None, y


def _head(path: str, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _rows_per_block(row_bytes: int) -> int:
    return max(1, BLOCK_BYTES // max(1, row_bytes))


def _idx_stream(path: str):
    """((dtype, shape), blocks) of an IDX file (gz or raw), read a block of rows at a time."""
    readers._must_be_file(path)
    gz = readers._is_gzip(path)
    f = gzip.open(path, "rb") if gz else open(path, "rb")
    try:
        header = f.read(4)
        if len(header) < 4 or header[:2] != b"\0\0" or header[2] not in readers.IDX_DTYPES or header[3] == 0:
            raise DataError(f"{path}: not an IDX file: magic number {header.hex() or '(empty)'}, expected "
                            f"0000 followed by a type code (08, 09, 0b, 0c, 0d, 0e) and ndim")
        dims_raw = f.read(4 * header[3])
        if len(dims_raw) < 4 * header[3]:
            raise DataError(f"{path}: truncated IDX header")
    except (OSError, EOFError, zlib.error) as e:
        f.close()
        raise DataError(f"{path}: cannot read IDX file: {e}") from None
    except DataError:
        f.close()
        raise
    stored = np.dtype(readers.IDX_DTYPES[header[2]])
    shape = tuple(int(d) for d in np.frombuffer(dims_raw, ">u4"))
    if not gz:
        expected = 4 + 4 * len(shape) + int(np.prod(shape, dtype=np.int64)) * stored.itemsize
        if os.path.getsize(path) != expected:
            f.close()
            raise DataError(f"{path}: IDX header says dimensions {shape} of {stored.name} ({expected} bytes "
                            f"with header), but the file holds {os.path.getsize(path)} bytes")
    return (stored.newbyteorder("="), shape), _blocks(f, path, stored, shape)


def _npz_stream(path: str, key: str):
    """((dtype, shape), blocks) of array `key` of an .npz, decompressed a block at a time."""
    try:
        archive = zipfile.ZipFile(path)
        if f"{key}.npy" not in archive.namelist():
            raise DataError(f"{path}: .npz holds {sorted(n[:-4] for n in archive.namelist())}, expected "
                            f"'x' and 'y'")
        f = archive.open(f"{key}.npy")
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(f))
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read array {key} of the .npz: {e}") from None
    if dtype.hasobject or dtype.kind not in "uif":
        raise DataError(f"{path}: array {key} has dtype {dtype}, expected an integer or floating dtype")
    if fortran and len(shape) > 1:
        raise DataError(f"{path}: array {key} is stored in Fortran order; save it C-ordered "
                        f"(np.ascontiguousarray) to stream it")
    if len(shape) == 0:
        raise DataError(f"{path}: array {key} is a scalar, expected one row per sample")
    return (dtype.newbyteorder("="), tuple(shape)), _blocks(f, path, dtype, tuple(shape))


def _blocks(f, path: str, stored: np.dtype, shape: tuple):
    """Blocks of rows (native byte order) read from the open file f, which is then closed."""
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * stored.itemsize
    step = _rows_per_block(row_bytes)
    try:
        for start in range(0, shape[0], step):
            rows = min(step, shape[0] - start)
            raw = f.read(rows * row_bytes)
            if len(raw) != rows * row_bytes:
                raise DataError(f"{path}: data ends at row {start + len(raw) // max(row_bytes, 1)}, the header "
                                f"announces {shape[0]} rows")
            yield np.frombuffer(raw, stored).reshape(rows, *shape[1:]).astype(stored.newbyteorder("="))
        if f.read(1):
            raise DataError(f"{path}: holds more data than its header announces ({shape[0]} rows)")
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    finally:
        f.close()
