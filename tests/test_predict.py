"""mbtrain predict: classes and probabilities for unlabeled inputs, in CSV or .npy, matching the model."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from mbtrain import checkpoint
from mbtrain.model import MLP


def mbtrain(*args):
    return subprocess.run([sys.executable, "-m", "mbtrain", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


@pytest.fixture
def trained(tmp_path, tiny_config):
    out = tmp_path / "run"
    r = mbtrain("fit", tiny_config, "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    return str(out / "checkpoints" / "best.npz")


def _expected(ckpt_path, x):
    c = checkpoint.load(ckpt_path)
    model = MLP(c.params, c.config.model.activation, c.config.model.output)
    P = model.predict(x.astype(np.float32))
    return P.argmax(axis=1), P


def test_predict_csv_to_stdout_with_proba(tmp_path, tiny_data, trained):
    x = np.load(tiny_data[1])["x"][:7]
    np.save(tmp_path / "x.npy", x)
    r = mbtrain("predict", trained, str(tmp_path / "x.npy"), "--proba")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "class,p0,p1,p2" and len(lines) == 8
    table = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    classes, P = _expected(trained, x)
    np.testing.assert_array_equal(table[:, 0], classes)
    np.testing.assert_allclose(table[:, 1:], P, rtol=1e-6)
    np.testing.assert_allclose(table[:, 1:].sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind", ["npz", "csv", "csv_with_label"])
def test_predict_writes_npy_classes_from_npz_and_csv(tmp_path, tiny_data, trained, kind):
    data = np.load(tiny_data[1])
    x, y = data["x"][:9], data["y"][:9]
    if kind == "npz":
        src = tmp_path / "in.npz"
        np.savez(src, x=x)
    else:
        src = tmp_path / "in.csv"
        cols = np.column_stack([y, x]) if kind == "csv_with_label" else x
        header = ",".join((["label"] if kind == "csv_with_label" else []) + [f"f{i}" for i in range(8)])
        np.savetxt(src, cols, delimiter=",", header=header, comments="", fmt="%.9g")
    out = tmp_path / "pred.npy"
    r = mbtrain("predict", trained, str(src), "--out", str(out))
    assert r.returncode == 0, r.stderr
    got = np.load(out, allow_pickle=False)
    assert got.dtype == np.int64 and got.shape == (9,)
    np.testing.assert_array_equal(got, _expected(trained, x)[0])


def test_predict_rejects_wrong_width_with_one_line(tmp_path, trained):
    np.save(tmp_path / "bad.npy", np.zeros((3, 5), np.float32))
    r = mbtrain("predict", trained, str(tmp_path / "bad.npy"))
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "5 features" in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "out.csv")


def test_predict_regression_values(tmp_path):
    from mbtrain.config import load_config
    from mbtrain.predict import predict
    cfg = load_config(None, ["model.layers=[2, 1]", "model.output=identity_mse"])
    W, b = np.array([[2.0, -1.0]], np.float32), np.array([0.5], np.float32)
    columns, table = predict(checkpoint.Checkpoint([W, b], {}, cfg, {}), np.array([[1.0, 1.0], [0.0, 2.0]],
                                                                               np.float32), proba=False)
    assert columns == ["y0"]
    np.testing.assert_allclose(table[:, 0], [1.5, -1.5])
