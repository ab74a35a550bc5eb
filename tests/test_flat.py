"""Packed parameter buffers (mbtrain.flat): layout, detection, and updates identical to per-array ones."""

from __future__ import annotations

import numpy as np
import pytest

from mbtrain import flat, guard, optim

SHAPES = [(7, 5), (7,), (3, 7), (3,)]
MIXED = ["F", "C", "C", "C"]          # the first W column-major, as model.weight_order may ask


def _arrays(rng, dtype=np.float32):
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("orders", [None, MIXED])
def test_pack_copies_into_aligned_views_of_one_buffer(dtype, orders):
    rng = np.random.default_rng(0)
    arrays = _arrays(rng, dtype)
    packed = flat.pack(arrays, orders=orders)
    buf = flat.buffer(packed)
    assert buf is not None and buf.ndim == 1 and buf.dtype == dtype
    for a, p, order in zip(arrays, packed, orders or "CCCC"):
        assert p.shape == a.shape and flat.order(p) == order and np.shares_memory(p, buf)
        assert p.flags.c_contiguous if order == "C" else p.flags.f_contiguous
        assert p.__array_interface__["data"][0] % flat.ALIGN_BYTES == 0
        np.testing.assert_array_equal(p, a)
        assert not np.shares_memory(p, a)
    # the gaps between arrays are zeros, and the buffer holds exactly the arrays plus the gaps
    assert buf.sum(dtype=np.float64) == pytest.approx(sum(a.sum(dtype=np.float64) for a in arrays))
    assert np.count_nonzero(buf) == sum(a.size for a in arrays)


def test_buffer_is_none_for_arrays_that_are_not_packed():
    rng = np.random.default_rng(1)
    arrays = _arrays(rng)
    packed = flat.pack(arrays)
    assert flat.buffer(arrays) is None                       # separate arrays
    assert flat.buffer(packed[::-1]) is None                 # packed, but in another order
    assert flat.buffer(packed[:2] + _arrays(rng)[2:]) is None  # a mix
    assert flat.buffer([packed[0][:, :2]]) is None           # a strided view
    assert flat.buffer(packed[:2]) is not None               # a packed prefix is a buffer of its own
    assert flat.buffer(flat.zeros_like(packed)) is not None
    assert flat.buffer(flat.zeros_like(arrays)) is None      # zeros_like keeps separate arrays separate
    mixed = flat.pack(arrays, orders=MIXED)
    assert flat.buffer(mixed) is not None
    assert [flat.order(a) for a in flat.zeros_like(mixed)] == MIXED   # and keeps each array's layout
    with pytest.raises(ValueError, match="2-D"):
        flat.zeros([(3,)], np.float32, ["F"])


def test_segments_cover_every_entry_once(monkeypatch):
    monkeypatch.setattr(flat, "CHUNK", 16)
    rng = np.random.default_rng(2)
    column_major = [np.asfortranarray(a) for a in _arrays(rng)]
    for params in (flat.pack(_arrays(rng)), flat.pack(_arrays(rng), orders=MIXED), _arrays(rng), column_major):
        grads = flat.zeros_like(params)
        for p, g in flat.segments(params, grads):
            assert p.size <= 16 and p.shape == g.shape
            g += 1                                           # mark every entry the pieces reach
        assert all((g == 1).all() for g in grads)
    with pytest.raises(ValueError, match="differ in layout"):  # pieces of a row- and a column-major array
        flat.segments(_arrays(rng), [np.asfortranarray(a) for a in _arrays(rng)])
    with pytest.raises(ValueError, match="differ in layout"):  # the same, both packed
        flat.segments(flat.pack(_arrays(rng)), flat.pack(_arrays(rng), orders=MIXED))


@pytest.mark.parametrize("name,kw", [("sgd", {}), ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=0.01)),
                                     ("rmsprop", dict(weight_decay=0.01)), ("adam", {}),
                                     ("adamw", dict(weight_decay=0.1))])
@pytest.mark.parametrize("orders", [None, MIXED])
def test_packed_and_separate_arrays_update_bit_identically(name, kw, orders, monkeypatch):
    monkeypatch.setattr(flat, "CHUNK", 8)                    # many pieces per array
    rng = np.random.default_rng(3)
    start = _arrays(rng)
    steps = [_arrays(rng) for _ in range(3)]
    cls = {"sgd": optim.SGD, "rmsprop": optim.RMSprop, "adam": optim.Adam, "adamw": optim.AdamW}[name]
    # separate arrays in the packed ones' memory orders: a BLAS level-1 kernel may round its
    # vector body (fused multiply-adds) and its tail differently (OpenBLAS's Haswell kernels do),
    # so an entry's result depends on its place in memory order, which packing keeps
    in_order = lambda arrays: [np.array(a, order=o) for a, o in zip(arrays, orders or ["C"] * len(arrays))]
    separate, packed = in_order(start), flat.pack(start, orders=orders)
    grads = flat.zeros_like(packed)
    opt_separate, opt_packed = cls(separate, 0.05, **kw), cls(packed, 0.05, **kw)
    for g in steps:
        opt_separate.step(in_order(g))
        for view, gi in zip(grads, g):
            view[...] = gi
        opt_packed.step(grads)
    for a, b in zip(separate, packed):
        np.testing.assert_array_equal(a, b)
    for (k, a), (k2, b) in zip(opt_separate.state().items(), opt_packed.state().items()):
        assert k == k2
        np.testing.assert_array_equal(a, b)


def test_guard_norm_from_the_buffer_equals_the_per_array_norm():
    rng = np.random.default_rng(4)
    grads = flat.pack(_arrays(rng, np.float64))
    assert guard.squared_norm(grads, flat.buffer(grads)) == pytest.approx(guard.squared_norm(grads), rel=1e-12)
    grads[2][1, 3] = np.nan
    with pytest.raises(Exception, match="dW1 has a non-finite value"):
        guard.check_step(1.0, grads, 0.0, flat.buffer(grads))
