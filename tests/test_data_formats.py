"""CSV sources, `mbtrain data convert` and `mbtrain data info` (issue 6)."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from conftest import ROOT, make_blobs
from killing import mbtrain
from mbtrain import convert, csvfile, data, datainfo, readers
from mbtrain.config import load_config
from mbtrain.errors import DataError

MNIST_TEST = os.path.join(ROOT, "data", "mnist", "t10k-images-idx3-ubyte.gz")


def write_csv(path, x, y, header=True, label_at=2, names=None):
    """x (N, d) and labels y (N,) as CSV text with the label in column `label_at`."""
    cols = [f"f{j}" for j in range(x.shape[1])]
    cols.insert(label_at, "label")
    lines = [",".join(names or cols)] if header else []
    for row, label in zip(x, y):
        cells = [repr(float(v)) for v in row]
        cells.insert(label_at, str(int(label)))
        lines.append(",".join(cells))
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture
def blobs():
    return make_blobs(50, 4, 3, seed=2)


@pytest.mark.parametrize("name,header,label,kwargs", [
    ("h.csv", True, "label", {}),
    ("h.csv.gz", True, 2, {}),
    ("n.csv", False, 2, {}),
    ("n.csv", False, -3, {"csv_header": "no"}),
])
def test_csv_source_reads_features_and_label_column(tmp_path, blobs, name, header, label, kwargs):
    x, y = blobs
    path = str(tmp_path / name)
    write_csv(path, x, y, header=header)
    gx, gy, got_name = readers.read_source(path, csv_label=label, **kwargs)
    assert got_name == path and gx.dtype == np.float32 and gy.dtype == np.int64
    np.testing.assert_array_equal(gx, x)
    np.testing.assert_array_equal(gy, y)


def test_csv_errors_name_line_and_column(tmp_path, blobs):
    x, y = blobs
    path = tmp_path / "bad.csv"
    write_csv(path, x, y)
    lines = path.read_text().splitlines()
    lines[7] = lines[7].replace(lines[7].split(",")[1], "oops", 1)
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"bad.csv: line 8, column 2: 'oops' is not a number"):
        readers.read_source(str(path), csv_label="label")
    lines[7] = "1,2,3"
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"line 8 has 3 columns, expected 5"):
        readers.read_source(str(path), csv_label="label")
    with pytest.raises(DataError, match=r"data.csv_label = 'klass': no such column .*'label'"):
        readers.read_source(str(path), csv_label="klass")
    with pytest.raises(DataError, match=r"data.csv_label = 9: the file has 5 columns"):
        readers.read_source(str(path), csv_label=9)
    lines[7] = "0.1,0.2,1.5,0.3,0.4"
    path.write_text("\n".join(lines))
    gx, gy, _ = readers.read_source(str(path), csv_label="label")     # a regression target is fine here
    assert gy.dtype == np.float64 and gy[6] == 1.5
    with pytest.raises(DataError, match=r"label y\[6\] = 1.5 is not a whole class number"):
        data.load(str(path), [4, 3], "training", load_config(None, ["data.csv_label=label"]).data)
    with pytest.raises(DataError, match=r"line 8, column 3: label 1.5 is not a whole class number"):
        convert.convert(str(path), str(tmp_path / "out"), csv_label="label")
    convert.convert(str(path), str(tmp_path / "reg"), csv_label="label", label_dtype="float32")
    assert np.load(tmp_path / "reg" / "y.npy")[6] == np.float32(1.5)


def _npy_pair(folder):
    return np.load(os.path.join(folder, "x.npy")), np.load(os.path.join(folder, "y.npy"))


def test_convert_csv_streams_in_blocks(tmp_path, blobs, monkeypatch):
    monkeypatch.setattr(csvfile, "BLOCK_ROWS", 7)               # 50 rows: 8 blocks
    x, y = blobs
    write_csv(tmp_path / "d.csv", x, y)
    out = tmp_path / "out"
    result = convert.convert(str(tmp_path / "d.csv"), str(out), csv_label="label", dtype="float64")
    gx, gy = _npy_pair(out)
    assert result["x"] == {"shape": [50, 4], "dtype": "float64"}
    np.testing.assert_array_equal(gx, x.astype(np.float64))
    np.testing.assert_array_equal(gy, y)
    assert sorted(os.listdir(out)) == ["x.npy", "y.npy"]          # no temp files left


def test_convert_npz_and_idx_keep_values_and_dtype(tmp_path, monkeypatch):
    monkeypatch.setattr(convert, "BLOCK_BYTES", 5000)           # many blocks per array
    x, y = make_blobs(60, 8, 3)
    np.savez_compressed(tmp_path / "d.npz", x=x.reshape(60, 2, 4), y=y.astype(">i4"))
    convert.convert(str(tmp_path / "d.npz"), str(tmp_path / "npz"))
    gx, gy = _npy_pair(tmp_path / "npz")
    np.testing.assert_array_equal(gx, x.reshape(60, 2, 4))
    assert gy.dtype == np.dtype("int32") and gy.dtype.isnative and np.array_equal(gy, y)
    convert.convert(MNIST_TEST, str(tmp_path / "mnist"))
    gx, gy = _npy_pair(tmp_path / "mnist")
    rx, ry, _ = readers.read_source(MNIST_TEST)
    assert gx.dtype == np.uint8 and gx.shape == (10000, 28, 28)
    np.testing.assert_array_equal(gx, rx)
    np.testing.assert_array_equal(gy, ry)


def test_convert_refuses_and_leaves_nothing_behind(tmp_path):
    x, y = make_blobs(10, 3, 2)
    np.savez(tmp_path / "d.npz", x=x, y=y[:9])
    with pytest.raises(DataError, match="10 samples but 9 labels"):
        convert.convert(str(tmp_path / "d.npz"), str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == []
    np.savez(tmp_path / "ok.npz", x=x, y=y)
    convert.convert(str(tmp_path / "ok.npz"), str(tmp_path / "ok"))
    before = (tmp_path / "ok" / "x.npy").read_bytes()
    with pytest.raises(DataError, match="x.npy: already exists"):
        convert.convert(str(tmp_path / "ok.npz"), str(tmp_path / "ok"))
    assert (tmp_path / "ok" / "x.npy").read_bytes() == before
    raw = tmp_path / "images-idx3-ubyte"                    # header says 5 images of 2x2, holds 4
    raw.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 5, 0, 0, 0, 2, 0, 0, 0, 2]) + bytes(16))
    with pytest.raises(DataError, match="IDX header says dimensions"):
        convert.convert(str(raw), str(tmp_path / "idx"))


def test_data_info_reports_counts_range_and_mapping(tmp_path):
    x, y = make_blobs(80, 5, 4, seed=3)
    x[3, 1] = np.nan
    os.makedirs(tmp_path / "pair")
    np.save(tmp_path / "pair" / "x.npy", x)
    np.save(tmp_path / "pair" / "y.npy", y)
    r = datainfo.info(str(tmp_path / "pair"))
    finite = x[np.isfinite(x)]
    assert r["samples"] == 80 and r["features"] == 5 and r["x_dtype"] == "float32"
    assert r["x_min"] == float(finite.min()) and r["x_max"] == float(finite.max())
    assert r["non_finite_values"] == 1 and r["memory_mapped"] is True
    assert r["labels"] == {str(k): int(v) for k, v in enumerate(np.bincount(y)) if v}
    np.savez(tmp_path / "d.npz", x=x, y=y)
    result = mbtrain("data", "info", str(tmp_path / "d.npz"), "--json")
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["memory_mapped"] is False and "mbtrain data convert" in r["advice"]
    text = mbtrain("data", "info", MNIST_TEST)
    assert text.returncode == 0 and "0:980  1:1135" in text.stdout and "samples     10000" in text.stdout


def test_data_commands_report_bad_input_in_one_line(tmp_path):
    for args in (["data", "info", str(tmp_path / "missing.npz")],
                 ["data", "convert", str(tmp_path / "missing.csv"), str(tmp_path / "o")],
                 ["data", "info", MNIST_TEST, "--header", "maybe"]):
        result = mbtrain(*args)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")


def test_fit_trains_from_a_csv_source(tmp_path, blobs):
    from mbtrain.config import load_config
    from mbtrain.train import fit
    x, y = blobs
    write_csv(tmp_path / "d.csv", x, y, header=False, label_at=0)
    cfg = load_config(None, base={"data": {"train": str(tmp_path / "d.csv"), "validation": 10, "csv_label": 0},
                                  "model": {"layers": [4, 6, 3]}, "train": {"epochs": 1, "batch_size": 8}})
    os.makedirs(tmp_path / "run" / "checkpoints")
    summary = fit(cfg, str(tmp_path / "run"), quiet=True)
    assert summary["steps"] == 5                                 # 40 training rows / 8
