"""Parameter arrays packed as views into one contiguous buffer, so an update is a few calls, not a few per array.

A network's [W0, b0, W1, b1, ...] (and their gradients and optimizer state) live in one 1-D
buffer each, every array a contiguous view starting on a 64-byte boundary (the gaps are
zeros and stay zero), row-major or, where the model asks for it, column-major ("F": the view
is the transpose of a row-major (n, m) block; mbtrain.model says which layers and why). Code
that works array by array sees ordinary arrays; an optimizer or the gradient norm can instead
make one pass over the buffer, in chunks small enough to stay in the cache, instead of two or
three numpy calls per array.

    params = flat.pack([W0, b0, W1, b1])        # copies, as views into one new buffer
    flat.buffer(params)                         # that buffer (N,), or None for arrays not packed
"""

from __future__ import annotations

import numpy as np

ALIGN_BYTES = 64
CHUNK = 1 << 15          # elements per numpy call when streaming over a buffer: a few operands fit in L2


def layout(shapes: list[tuple], itemsize: int) -> tuple[list[int], int]:
    """(offset of each array in elements, total elements) with every offset on a 64-byte boundary."""
    align = max(1, ALIGN_BYTES // itemsize)
    offsets, total = [], 0
    for shape in shapes:
        offsets.append(total)
        size = int(np.prod(shape, dtype=np.int64))
        total += -(-size // align) * align
    return offsets, total


def pack(arrays: list[np.ndarray], dtype=None, orders: list[str] | None = None) -> list[np.ndarray]:
    """Copies of `arrays` (in `dtype`, default the first array's) as views into one new buffer.

    orders: "C" (row-major, the default) or "F" (column-major, 2-D arrays only) per array.
    """
    dtype = np.dtype(dtype or arrays[0].dtype)
    views = zeros([a.shape for a in arrays], dtype, orders)
    for view, a in zip(views, arrays):
        view[...] = a
    return views


def zeros(shapes: list[tuple], dtype, orders: list[str] | None = None) -> list[np.ndarray]:
    """Zero-filled arrays of these shapes (and orders, as in pack), packed into one new buffer."""
    dtype = np.dtype(dtype)
    orders = orders or ["C"] * len(shapes)
    offsets, total = layout(shapes, dtype.itemsize)
    # over-allocate so the buffer itself starts on a 64-byte boundary
    raw = np.zeros(total + ALIGN_BYTES // dtype.itemsize, dtype)
    skip = (-_address(raw) % ALIGN_BYTES) // dtype.itemsize
    buf = raw[skip:skip + total]
    views = []
    for o, s, order in zip(offsets, shapes, orders):
        block = buf[o:o + int(np.prod(s, dtype=np.int64))]
        if order == "F":
            if len(s) != 2:
                raise ValueError(f"flat.zeros: a column-major array must be 2-D, got shape {s}")
            views.append(block.reshape(s[::-1]).T)
        else:
            views.append(block.reshape(s))
    return views


def order(a: np.ndarray) -> str:
    """ "F" for a column-major 2-D array that is not also row-major, else "C"."""
    return "F" if a.ndim == 2 and a.flags.f_contiguous and not a.flags.c_contiguous else "C"


def aligned(shape: tuple, dtype) -> np.ndarray:
    """A zero-filled array whose data starts on a 64-byte (cache-line) boundary, for buffers BLAS reads."""
    return zeros([shape], dtype)[0]


def zeros_like(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Zeros shaped like `arrays`: packed when `arrays` are, else separate arrays."""
    if buffer(arrays) is not None:
        return zeros([a.shape for a in arrays], arrays[0].dtype, [order(a) for a in arrays])
    return [np.zeros_like(a) for a in arrays]


def buffer(arrays: list[np.ndarray]) -> np.ndarray | None:
    """The 1-D buffer `arrays` are packed in (by pack or zeros, in this order), else None."""
    if not arrays:
        return None
    dtype, owner = arrays[0].dtype, arrays[0].base
    if not isinstance(owner, np.ndarray) or owner.ndim != 1 or owner.dtype != dtype:
        return None
    offsets, total = layout([a.shape for a in arrays], dtype.itemsize)
    start = _address(arrays[0])
    for a, offset in zip(arrays, offsets):
        if a.base is not owner or a.dtype != dtype or not (a.flags.c_contiguous or a.flags.f_contiguous) \
                or _address(a) != start + offset * dtype.itemsize:
            return None
    first = (start - _address(owner)) // dtype.itemsize
    if first + total > owner.size:
        return None
    return owner[first:first + total]


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def largest_piece(arrays: list[np.ndarray]) -> int:
    """The most elements a piece of `segments` over these arrays can have (a scratch array's size)."""
    whole = buffer(arrays)
    return min(CHUNK, whole.size if whole is not None else max(a.size for a in arrays))


def segments(*groups: list[np.ndarray]) -> list[tuple[np.ndarray, ...]]:
    """Matching 1-D pieces of ≤ CHUNK elements of each group (params, grads, state ...).

    The groups' arrays must be shaped and laid out alike (zeros_like makes them so).

    When every group is packed, the pieces run over the whole buffers (gaps included), so an
    update takes a few calls per CHUNK elements; otherwise they run array by array.
    """
    for arrays in zip(*groups):
        if len({order(a) for a in arrays}) > 1:         # pieces in memory order would not match up
            raise ValueError(f"flat.segments: arrays of shape {arrays[0].shape} differ in layout "
                             f"({', '.join(order(a) for a in arrays)})")
    buffers = [buffer(g) for g in groups]
    if all(b is not None for b in buffers):
        wholes = [buffers]
    else:
        wholes = [[a.reshape(-1, order="A") for a in arrays] for arrays in zip(*groups)]   # memory order: views
    pieces = []
    for whole in wholes:
        n = whole[0].size
        for s in range(0, n, CHUNK):
            pieces.append(tuple(w[s:s + CHUNK] for w in whole))
    return pieces
