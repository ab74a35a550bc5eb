"""`mbtrain data info PATH`: what a data source holds, from one streaming pass.

Samples, feature shape, dtypes, label histogram, feature min/max, non-finite values, and
whether training reads it memory-mapped (bounded memory) or loads it whole.

    mbtrain data info data/mnist/train-images-idx3-ubyte.gz
    mbtrain data info data/big --json
"""

from __future__ import annotations

import os

import numpy as np

from mbtrain import streaming
from mbtrain.readers import is_csv, read_source

MAX_CLASSES = 1_000_000         # labels at or past this count as invalid (no huge histogram)


def info(source, csv_label=0, csv_header: str = "auto") -> dict:
    """The description of a source (a path or {x: PATH, y: PATH}) as a JSON-ready dict."""
    x, y, name = read_source(source, csv_label=csv_label, csv_header=csv_header)
    mapped = streaming.is_mapped(x) and streaming.is_mapped(y)
    lo, hi, non_finite = _value_range(x)
    result = {
        "path": name, "format": _format(source), "samples": int(len(x)),
        "feature_shape": list(x.shape[1:]), "features": int(np.prod(x.shape[1:], dtype=np.int64)),
        "x_dtype": x.dtype.name, "y_dtype": y.dtype.name, "y_shape": list(y.shape[1:]),
        "x_min": lo, "x_max": hi, "non_finite_values": non_finite,
        "labels": _histogram(y),
        "memory_mapped": mapped,
        "in_memory_mb": 0.0 if mapped else round((x.nbytes + y.nbytes) / 1e6, 1),
    }
    result["advice"] = ("memory-mapped: trains in bounded memory" if mapped else
                        f"read whole into memory ({result['in_memory_mb']} MB); for bounded memory run "
                        f"'mbtrain data convert {name} OUT_DIR' and train from OUT_DIR")
    return result


def _format(source) -> str:
    if isinstance(source, dict):
        return "npy pair"
    if os.path.isdir(source):
        return "npy folder"
    if is_csv(source):
        return "csv"
    if source.endswith(".npz"):
        return "npz"
    return "idx (gzip)" if source.endswith(".gz") else "idx"


def _value_range(x: np.ndarray) -> tuple:
    """(min, max) of the finite feature values and the count of NaN/Inf, chunk by chunk."""
    lo, hi, bad = None, None, 0
    for _, chunk in streaming.chunks(x):
        values = chunk.reshape(-1)
        if x.dtype.kind == "f":
            finite = np.isfinite(values)
            bad += int(values.size - finite.sum())
            values = values[finite]
        if values.size:
            c_lo, c_hi = values.min().item(), values.max().item()
            lo, hi = (c_lo, c_hi) if lo is None else (min(lo, c_lo), max(hi, c_hi))
    return lo, hi, bad


def _histogram(y: np.ndarray) -> dict:
    """{label: count} of integer labels (for (N, m) targets: of their argmax), chunk by chunk."""
    counts = np.zeros(0, np.int64)
    odd = 0                                            # labels that are negative or not whole
    for _, chunk in streaming.chunks(y):
        labels = chunk.argmax(axis=1) if chunk.ndim == 2 else chunk
        good = (labels >= 0) & (labels < MAX_CLASSES)
        if labels.dtype.kind == "f":
            good &= np.mod(labels, 1) == 0
        odd += int(len(labels) - good.sum())
        found = np.bincount(labels[good].astype(np.int64))
        if len(found) > len(counts):
            counts = np.pad(counts, (0, len(found) - len(counts)))
        counts[:len(found)] += found
    histogram = {str(label): int(c) for label, c in enumerate(counts) if c}
    if odd:
        histogram["invalid"] = odd
    return histogram


def text(result: dict) -> str:
    r = result
    shape = "x".join(map(str, r["feature_shape"])) or "1"
    labels = "  ".join(f"{k}:{v}" for k, v in r["labels"].items())
    return "\n".join([
        f"path        {r['path']} ({r['format']})",
        f"samples     {r['samples']}",
        f"features    {r['features']} (shape {shape}), {r['x_dtype']}, min {r['x_min']}, max {r['x_max']}"
        + (f", {r['non_finite_values']} NaN/Inf" if r["non_finite_values"] else ""),
        f"targets     {r['y_dtype']}" + (f" (N, {r['y_shape'][0]})" if r["y_shape"] else " labels"),
        f"labels      {labels}",
        f"memory      {r['advice']}",
    ])
