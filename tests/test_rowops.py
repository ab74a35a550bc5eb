"""Row maxima and sums, column sums (mbtrain.rowops) against numpy's own reductions."""

import numpy as np
import pytest

from mbtrain import rowops

# both ways row_max can go: a transposed copy (short rows, tall batch) and numpy's own reduction
SHAPES = [(64, 10), (256, 2), (32, rowops.TRANSPOSED_MAX_WIDTH), (10, 10), (64, 100), (3, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_max_is_numpys_exactly(shape, dtype):
    Z = np.random.default_rng(0).standard_normal(shape).astype(dtype) * 50
    Z[0, -1] = Z[0].max() + 1          # a maximum in the last column
    out = rowops.row_max(Z)
    assert out.dtype == dtype and out.shape == (shape[0],)
    np.testing.assert_array_equal(out, Z.max(axis=1))


def test_both_paths_are_taken():
    assert rowops._transposed(np.empty((64, 10))) and not rowops._transposed(np.empty((64, 100)))
    assert not rowops._transposed(np.empty((10, 10)))


@pytest.mark.parametrize("shape", SHAPES)
def test_row_max_propagates_non_finite_values(shape):
    Z = np.zeros(shape, np.float32)
    Z[0, 0], Z[-1, -1] = np.nan, np.inf
    out = rowops.row_max(Z)
    assert np.isnan(out[0]) and out[-1] == np.inf


@pytest.mark.parametrize("shape", SHAPES + [(256, 1024)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sums_match_numpy_in_the_same_dtype(shape, dtype):
    Z = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    ref = Z.astype(np.float64)
    rows, cols = rowops.row_sums(Z), rowops.column_sums(Z)
    assert rows.dtype == cols.dtype == dtype and rows.shape == (shape[0],) and cols.shape == (shape[1],)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(rows, ref.sum(axis=1), rtol=tol, atol=tol * np.sqrt(shape[1]))
    np.testing.assert_allclose(cols, ref.sum(axis=0), rtol=tol, atol=tol * np.sqrt(shape[0]))


def test_sums_into_out_and_views():
    Z = np.arange(60, dtype=np.float32).reshape(12, 5)
    out = np.empty(5, np.float32)
    assert rowops.column_sums(Z, out=out) is out
    np.testing.assert_array_equal(out, Z.sum(axis=0))
    view = Z[::2, 1:4]                  # not contiguous
    np.testing.assert_array_equal(rowops.row_sums(view), view.sum(axis=1))
    np.testing.assert_array_equal(rowops.column_sums(view), view.sum(axis=0))


def test_ones_is_shared_and_read_only():
    v = rowops.ones(7, np.dtype(np.float32))
    assert v is rowops.ones(7, np.dtype(np.float32)) and not v.flags.writeable
    assert v.dtype == np.float32 and (v == 1).all()
