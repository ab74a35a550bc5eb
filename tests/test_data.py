"""Loader: IDX header checks, formats, the validation split, and seeded per-epoch permutations."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

from conftest import ROOT
from mbtrain import data
from mbtrain.errors import DataError
from mbtrain.readers import read_idx, read_source


def write_idx(path, array, code=0x08, gz=False, extra=b""):
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + array.astype(array.dtype.newbyteorder(">")).tobytes() + extra
    (gzip.open if gz else open)(path, "wb").write(blob)
    return str(path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    images = np.arange(5 * 3 * 2, dtype=np.uint8).reshape(5, 3, 2)
    got = read_idx(write_idx(tmp_path / "img-idx3-ubyte", images, gz=gz))
    np.testing.assert_array_equal(got, images)
    if not gz:
        assert isinstance(got, np.memmap)


def test_idx_other_dtypes(tmp_path):
    values = np.array([1.5, -2.25, 3.0], dtype=np.float32)
    got = read_idx(write_idx(tmp_path / "f.idx", values.astype(">f4"), code=0x0D))
    np.testing.assert_array_equal(got, values)


def test_idx_wrong_magic(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 10)
    with pytest.raises(DataError, match="not an IDX file: magic number 01020801"):
        read_idx(str(path))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_size_must_match_header(tmp_path, gz):
    images = np.zeros((4, 2, 2), np.uint8)
    short = tmp_path / "short.idx"
    raw = (struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">3I", 4, 2, 2) + images.tobytes())[:-3]
    (gzip.open if gz else open)(short, "wb").write(raw)
    with pytest.raises(DataError, match=r"dimensions \(4, 2, 2\).*holds 29 bytes"):
        read_idx(str(short))
    long = write_idx(tmp_path / "long.idx", images, gz=gz, extra=b"xx")
    with pytest.raises(DataError, match="holds 34 bytes"):
        read_idx(long)


def test_idx_truncated_header(tmp_path):
    path = tmp_path / "t.idx"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(str(path))


def test_mnist_bundled_files_read():
    x, y, _ = read_source(os.path.join(ROOT, "data", "mnist", "t10k-images-idx3-ubyte.gz"))
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and set(np.unique(y)) == set(range(10))


def test_npy_pair_is_memory_mapped(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(50, 6), dtype=np.uint8)
    y = np.arange(50) % 3
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    for source in (str(tmp_path), {"x": str(tmp_path / "x.npy"), "y": str(tmp_path / "y.npy")}):
        gx, gy, _ = read_source(source)
        assert isinstance(gx, np.memmap) and isinstance(gy, np.memmap)
        np.testing.assert_array_equal(gx, x)


def test_pixels_scale_to_unit_interval_in_configured_dtype(tmp_path):
    x = np.array([[0, 255, 51]], dtype=np.uint8).repeat(4, axis=0)
    y = np.array([0, 1, 2, 1])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = data.load(str(tmp_path / "d.npz"), [3, 3], "training")
    for dtype in (np.float32, np.float64):
        batches = data.Batches(ds, 4, False, dtype, 3, seed=0)
        X, Y = next(batches.epoch(0))
        assert X.dtype == dtype and Y.dtype == dtype
        np.testing.assert_allclose(X, np.array([[0, 1, 0.2]] * 4, dtype), rtol=1e-6)
        order = ds.start + np.sort(data.epoch_order(0, 0, 4))   # a batch's rows are read in file order
        np.testing.assert_array_equal(Y.argmax(1), y[order])


def make_dataset(n=103, features=2, classes=4):
    x = np.arange(n * features, dtype=np.float32).reshape(n, features)
    return data.Dataset(x, np.arange(n) % classes, "mem")


@pytest.mark.parametrize("batch_size,drop_last", [(10, False), (10, True), (103, False), (1, False), (200, False)])
def test_each_epoch_is_a_permutation(batch_size, drop_last):
    ds = make_dataset()
    batches = data.Batches(ds, batch_size, drop_last, np.float64, 4, seed=5)
    seen = []
    for X, _ in batches.epoch(0):
        assert 1 <= len(X) <= batch_size
        seen.extend((X[:, 0] // 2).astype(int).tolist())
    assert len(seen) == batches.steps_per_epoch() * batch_size if drop_last else len(seen) == 103
    if not drop_last:
        assert sorted(seen) == list(range(103))
    else:
        assert len(set(seen)) == len(seen) == 100


def test_shuffle_is_seeded_and_differs_between_epochs():
    assert np.array_equal(data.epoch_order(7, 3, 1000), data.epoch_order(7, 3, 1000))
    assert not np.array_equal(data.epoch_order(7, 3, 1000), data.epoch_order(7, 4, 1000))
    assert not np.array_equal(data.epoch_order(7, 3, 1000), data.epoch_order(8, 3, 1000))


def test_resume_mid_epoch_yields_the_remaining_batches():
    ds = make_dataset()
    batches = data.Batches(ds, 10, False, np.float64, 4, seed=1)
    full = [X.copy() for X, _ in batches.epoch(2)]
    rest = [X.copy() for X, _ in batches.epoch(2, first_step=4)]
    assert len(rest) == len(full) - 4
    for a, b in zip(full[4:], rest):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("validation,sizes", [(10000, (50000, 10000)), (0.25, (45000, 15000)), (0, (60000, None))])
def test_validation_split_from_the_end(validation, sizes):
    ds = data.Dataset(np.zeros((60000, 1), np.uint8), np.zeros(60000, np.int64), "m")
    train, val = ds.split(validation)
    assert len(train) == sizes[0]
    if sizes[1] is None:
        assert val is None
    else:
        assert len(val) == sizes[1] and val.stop == 60000 and train.stop == val.start


def test_split_leaving_nothing_is_refused():
    with pytest.raises(DataError, match="leaves no training samples"):
        make_dataset(n=10).split(10)


@pytest.mark.parametrize("x,y,layers,needle", [
    (np.zeros((5, 3)), np.zeros(5, int), [4, 2], "3 features.*model.layers\\[0\\] = 4"),
    (np.zeros((5, 3)), np.full(5, 2), [3, 2], "label y\\[0\\] = 2 is outside \\[0, 2\\)"),
    (np.zeros((5, 3)), np.full(5, -1), [3, 2], "label y\\[0\\] = -1 is outside"),
    (np.zeros((5, 3)), np.zeros(4, int), [3, 2], "x has 5 samples but y has 4"),
    (np.zeros((0, 3)), np.zeros(0, int), [3, 2], "empty"),
    (np.array([[0, np.nan, 0]] * 5), np.zeros(5, int), [3, 2], "x\\[0\\] feature 1 is nan"),
    (np.array([[0, 0, 0]] * 3 + [[np.inf, 0, 0]]), np.zeros(4, int), [3, 2], "x\\[3\\] feature 0 is inf"),
    (np.zeros((5, 3), bool), np.zeros(5, int), [3, 2], "dtype bool"),
])
def test_data_checks(x, y, layers, needle):
    with pytest.raises(DataError, match=needle):
        data.check(x, y, "f.npz", layers, "training")
