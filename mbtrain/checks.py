"""Data checks run before step 1: each failure names the file, the position, what was expected and found.

Cheap checks (dtypes, x/y lengths, feature width against model.layers[0], target shape)
always run. The streaming pass over the values (labels in [0, classes), whole-number
labels, NaN/Inf in features) reads the data a few MiB at a time, so it works on files
larger than memory; `data.check: false` skips it for trusted data.

    mbtrain fit configs/mnist.yaml --set data.check=false
"""

from __future__ import annotations

import numpy as np

from mbtrain import streaming
from mbtrain.errors import DataError

SKIP_HINT = "(set data.check: false to skip this scan for trusted data)"


def check(x: np.ndarray, y: np.ndarray, name: str, layers: list[int], role: str,
          scan: bool = True) -> None:
    """Refuse data that cannot train this network; `scan` adds the streaming pass over the values."""
    check_shapes(x, y, name, layers, role)
    if scan:
        check_labels(y, name, layers[-1])
        check_finite(x, name)


def check_shapes(x: np.ndarray, y: np.ndarray, name: str, layers: list[int], role: str) -> None:
    """dtype, sample counts, feature width and target shape: no data is read."""
    for array_name, a in (("x", x), ("y", y)):
        if a.dtype.kind not in "uif":
            raise DataError(f"{name}: array {array_name} has dtype {a.dtype}, expected an integer or "
                            f"floating dtype")
    if x.ndim < 1 or len(x) == 0:
        raise DataError(f"{name}: {role} data is empty (0 samples)")
    if y.ndim < 1:
        raise DataError(f"{name}: y is a single value (shape ()), expected one label per sample")
    if len(x) != len(y):
        raise DataError(f"{name}: x has {len(x)} samples but y has {len(y)}; expected one label per sample")
    width = int(np.prod(x.shape[1:], dtype=np.int64))
    if width != layers[0]:
        raise DataError(f"{name}: samples have {width} features (shape {x.shape[1:]}), "
                        f"but model.layers[0] = {layers[0]}")
    classes = layers[-1]
    if y.ndim == 1:
        return
    if y.shape[1:] != (classes,):
        raise DataError(f"{name}: targets y have shape {y.shape}, expected (N,) labels or (N, {classes})")


def check_labels(y: np.ndarray, name: str, classes: int) -> None:
    """Integer labels in [0, classes): the first offending sample is named."""
    if y.ndim != 1:
        for start, chunk in streaming.chunks(y):
            _first_bad(~np.isfinite(chunk).all(axis=1), start, name, lambda i: (
                f"y[{i}] has a NaN or Inf target, expected finite values {SKIP_HINT}"))
        return
    for start, chunk in streaming.chunks(y):
        if chunk.dtype.kind == "f":
            _first_bad(np.mod(chunk, 1) != 0, start, name, lambda i: (
                f"label y[{i}] = {y[i]} is not a whole class number, expected an integer in "
                f"[0, {classes})"))
        _first_bad((chunk < 0) | (chunk >= classes), start, name, lambda i: (
            f"label y[{i}] = {y[i]} is outside [0, {classes}) (model.layers[-1] = {classes})"))


def check_finite(x: np.ndarray, name: str) -> None:
    """No NaN or Inf in float features: the first offending sample and feature are named."""
    if x.dtype.kind != "f":
        return
    for start, chunk in streaming.chunks(x):
        flat = chunk.reshape(len(chunk), -1)
        if not np.isfinite(flat).all():
            bad = np.argwhere(~np.isfinite(flat))[0]
            i, j = start + int(bad[0]), int(bad[1])
            raise DataError(f"{name}: x[{i}] feature {j} is {flat[bad[0], j]}, expected a finite "
                            f"number {SKIP_HINT}")


def _first_bad(mask: np.ndarray, start: int, name: str, message) -> None:
    if mask.any():
        raise DataError(f"{name}: {message(start + int(np.argmax(mask)))}")
