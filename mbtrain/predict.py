"""Predictions for new data from a checkpoint: the class of each sample, optionally its probabilities.

Inputs need no labels: an IDX images file, an .npy array, an .npz (array x), a folder with x.npy,
or a CSV file (features only, or features plus the label column the checkpoint's config names).
The checkpoint's own normalization is applied, exactly as in training. Output is CSV (stdout or
a .csv file) or .npy:

    class                  argmax of the outputs (a single sigmoid output: 1 when p >= 0.5)
    p0, ..., p{m-1}        with --proba: softmax/sigmoid outputs (for multi-label models, each
                           label's probability; threshold at 0.5)
    y0, ..., y{m-1}        regression models (identity_mse): the predicted values, no class

    mbtrain predict runs/mnist/checkpoints/best.npz data/mnist/t10k-images-idx3-ubyte.gz --proba --out p.csv
"""

from __future__ import annotations

import io
import os

import numpy as np

from mbtrain import csvfile, readers
from mbtrain.checkpoint import Checkpoint, write_atomic
from mbtrain.data import Dataset
from mbtrain.errors import DataError, MbtrainError
from mbtrain.model import MLP


def read_inputs(path: str, features: int, cfg_data) -> np.ndarray:
    """The raw samples x (N, features) of an unlabeled input file, in its stored dtype."""
    if not os.path.exists(path):
        raise DataError(f"{path}: input file not found")
    if os.path.isdir(path):
        x = readers.read_npy(os.path.join(path, "x.npy")) if os.path.exists(os.path.join(path, "x.npy")) \
            else None
        if x is None:
            raise DataError(f"{path}: folder holds no x.npy")
    elif readers.is_csv(path):
        x = _read_csv(path, features, cfg_data)
    else:
        with open(path, "rb") as f:
            head = f.read(6)
        if head[:4] == b"PK\x03\x04" or path.endswith(".npz"):
            x = _read_npz_x(path)
        else:
            x = readers.read_array(path)                      # .npy or IDX, by content
    x = x.reshape(len(x), -1) if x.ndim != 2 else x
    if x.shape[1] != features:
        raise DataError(f"{path}: samples have {x.shape[1]} features, the checkpoint's network takes "
                        f"{features} (model.layers[0])")
    if x.dtype.kind not in "uif":
        raise DataError(f"{path}: array has dtype {x.dtype}, expected numbers")
    return x


def _read_npz_x(path: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise DataError(f"{path}: .npz holds arrays {sorted(z.files)}, expected 'x'")
            return z["x"]
    except DataError:
        raise
    except Exception as e:                                    # corrupt zip, pickled object, ...
        raise DataError(f"{path}: cannot read .npz file: {e}") from None


def _read_csv(path: str, features: int, cfg_data) -> np.ndarray:
    """Features of a CSV file: all columns, or all but the label column (data.csv_label) if one more."""
    with csvfile._open(path) as f:
        lines = [line.rstrip("\r\n").split(",") for line in f if line.strip()]
    header = None
    if lines and (cfg_data.csv_header == "yes" or (cfg_data.csv_header == "auto"
                                                   and not all(map(csvfile._is_number, lines[0])))):
        header, lines = [c.strip().strip('"') for c in lines[0]], lines[1:]
    try:
        x = np.array(lines, dtype=np.float32)
    except ValueError:
        raise DataError(f"{path}: expected rows of {features} or {features + 1} numbers") from None
    if x.ndim != 2 or len(x) == 0:
        raise DataError(f"{path}: no sample lines of equal width")
    if x.shape[1] == features + 1:                           # drop the label column
        label = cfg_data.csv_label
        if isinstance(label, str) and header and label in header:
            label = header.index(label)
        x = np.delete(x, int(label) if str(label).lstrip("-").isdigit() else 0, axis=1)
    return x


def predict(ckpt: Checkpoint, x: np.ndarray, proba: bool) -> tuple[list[str], np.ndarray]:
    """(column names, table (N, columns)) of predictions for raw samples x (N, features)."""
    cfg = ckpt.config
    model = MLP(ckpt.params, cfg.model.activation, cfg.model.output)
    m = model.layers[-1]
    dataset = Dataset(x, np.zeros(len(x), np.int64), "input")
    dataset.normalization = getattr(ckpt, "normalization", None)
    outputs = []
    for X, _ in dataset.chunks(cfg.train.eval_batch_size, model.dtype, m):
        outputs.append(model.out.predict(model.logits(X)))     # (K, m) probabilities or values
    A = np.concatenate(outputs) if outputs else np.empty((0, m), model.dtype)
    if cfg.model.output == "identity_mse":
        return [f"y{j}" for j in range(m)], A
    classes = (A[:, 0] >= 0.5).astype(np.int64) if m == 1 else A.argmax(axis=1)
    if not proba:
        return ["class"], classes[:, None]
    return ["class"] + [f"p{j}" for j in range(m)], np.concatenate([classes[:, None], A], axis=1)


def to_csv(columns: list[str], table: np.ndarray) -> str:
    buf = io.StringIO()
    buf.write(",".join(columns) + "\n")
    integer = columns == ["class"]
    for row in table:
        buf.write(",".join(str(int(v)) if integer or (j == 0 and columns[0] == "class") else repr(float(v))
                           for j, v in enumerate(row)) + "\n")
    return buf.getvalue()


def write(path: str, columns: list[str], table: np.ndarray) -> None:
    """Write the predictions atomically: .npy (classes (N,) int64, or the table) or CSV."""
    if path.endswith(".npy"):
        array = table[:, 0].astype(np.int64) if columns == ["class"] else table
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        write_atomic(path, buf.getvalue())
    elif path.endswith(".csv") or path.endswith(".txt"):
        write_atomic(path, to_csv(columns, table).encode())
    else:
        raise MbtrainError(f"--out {path}: expected a .csv or .npy file name")
