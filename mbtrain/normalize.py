"""Feature normalization (`data.normalize`): fitted on the training split, stored in the checkpoint.

Every mode is a per-feature affine map x' = (x - shift) * scale, applied to each batch after
the cast (and after uint8 pixels are scaled by 1/255):

    none         no map;
    unit         shift = min, scale = 1 / (max - min)      -> [0, 1] on the training split;
    standardize  shift = mean, scale = 1 / std              -> zero mean, unit variance.

A constant feature gets scale 1. The statistics come from one streaming pass over the
training rows (float64 sums, chunk by chunk, merged with Chan's formula), never from a
float copy of the data. The checkpoint keeps them as arrays norm.shift and norm.scale so
that eval and predict apply exactly the training transform.

    mbtrain fit configs/mnist.yaml --set data.normalize=standardize
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbtrain import streaming

MODES = ("none", "unit", "standardize")


@dataclass
class Normalization:
    """x' = (x - shift) * scale per feature; shift, scale (d,) float64."""

    mode: str
    shift: np.ndarray
    scale: np.ndarray

    def apply(self, X: np.ndarray) -> np.ndarray:
        """Transform the batch X (K, d) in place, in X's dtype (no upcast); returns X."""
        X -= self.shift.astype(X.dtype, copy=False)
        X *= self.scale.astype(X.dtype, copy=False)
        return X

    def arrays(self) -> dict[str, np.ndarray]:
        """The checkpoint arrays."""
        return {"norm.shift": self.shift, "norm.scale": self.scale}


def fit(x: np.ndarray, start: int, stop: int, mode: str, pixel_scale: float | None) -> Normalization | None:
    """Statistics of rows [start, stop) of x (N, d), in one streaming pass; None for mode none.

    pixel_scale: the factor the loader applies before normalizing (1/255 for uint8), or None.
    """
    if mode == "none":
        return None
    d = x.shape[1]
    count, mean, m2 = 0, np.zeros(d), np.zeros(d)          # running mean and sum of squared deviations
    lo, hi = np.full(d, np.inf), np.full(d, -np.inf)
    # chunks sized so that their float64 copies (about three at once) stay near 8 MiB each
    for _, chunk in streaming.chunks(x, start, stop, max(1, (8 << 20) * x.dtype.itemsize // 8)):
        c = chunk.astype(np.float64)                          # (rows, d)
        if pixel_scale is not None:
            c *= pixel_scale
        n_c, mean_c = len(c), c.mean(axis=0)
        m2_c = ((c - mean_c) ** 2).sum(axis=0)
        delta, total = mean_c - mean, count + n_c
        mean = mean + delta * (n_c / total)
        m2 = m2 + m2_c + delta ** 2 * (count * n_c / total)
        count = total
        np.minimum(lo, c.min(axis=0), out=lo)
        np.maximum(hi, c.max(axis=0), out=hi)
    if mode == "unit":
        shift, spread = lo, hi - lo
    else:
        shift, spread = mean, np.sqrt(m2 / count)
    scale = np.ones(d)
    np.divide(1.0, spread, out=scale, where=spread > 0)      # constant features keep scale 1
    return Normalization(mode, shift, scale)


def from_arrays(mode: str, arrays: dict, features: int) -> Normalization | None:
    """The Normalization stored in a checkpoint's arrays; None for mode none.

    Raises KeyError or ValueError (the checkpoint reader names the file) when they are
    missing or have the wrong shape.
    """
    if mode == "none":
        return None
    shift, scale = arrays["norm.shift"], arrays["norm.scale"]
    for name, a in (("norm.shift", shift), ("norm.scale", scale)):
        if a.shape != (features,) or a.dtype != np.float64:
            raise ValueError(f"array {name} has shape {a.shape} {a.dtype}, expected ({features},) float64")
    return Normalization(mode, shift.copy(), scale.copy())
