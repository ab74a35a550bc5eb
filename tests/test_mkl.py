"""oneMKL as the library of the training step's products (train.blas, mbtrain.gemm.select): its
products against float64 references, a step through it against numpy's and the per-sample
gradients, a whole run through it (deterministic, reported), and the errors where it is missing.

The MKL tests need the optional mkl package (`pip install -e '.[test]'` installs it on x86_64
Linux and Windows, where its wheels exist); elsewhere they are skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from mbtrain import bench, blas, cli, gemm, optim, step
from mbtrain.config import load_config
from mbtrain.errors import ConfigError
from mbtrain.model import MLP, init_params
from mbtrain.train import fit as fit_run

needs_mkl = pytest.mark.skipif(gemm._mkl_library() is None, reason="the mkl package is not installed")


def _model(dtype, layers=(6, 64, 9, 3), seed=0):
    rng = np.random.default_rng(seed)
    return MLP(init_params(list(layers), "he", "normal", "relu", rng, dtype), "relu", "softmax_cross_entropy")


def _batch(dtype, K=8, n=6, classes=3, seed=42):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((K, n)).astype(dtype), np.eye(classes, dtype=dtype)[rng.integers(0, classes, K)]


def test_select_takes_the_known_libraries_only():
    with pytest.raises(ValueError, match="unknown BLAS library 'openblas'"):
        gemm.select("openblas")
    assert gemm.selected() == "numpy"
    with gemm.using("numpy") as library:
        assert library == "numpy"


def test_without_mkl_auto_takes_numpy_and_mkl_is_a_config_error(monkeypatch, tiny_config, tmp_path, capsys):
    monkeypatch.setattr(gemm, "_mkl_library", lambda: None)
    with gemm.using("auto") as library:
        assert library == "numpy"
    with pytest.raises(ValueError, match="pip install 'mbtrain\\[mkl\\]'"):
        gemm.select("mkl")
    with pytest.raises(ConfigError, match="train.blas = mkl: .*allowed: auto, numpy, mkl"):
        with blas.limit(0, "mkl"):
            pass
    cfg = load_config(tiny_config, ["train.blas=mkl"])
    with pytest.raises(ConfigError, match="train.blas"):
        fit_run(cfg, str(tmp_path / "run"), quiet=True)
    assert gemm.selected() == "numpy"
    # the command checks it with the config, before it writes anything
    with pytest.raises(SystemExit) as exit_:
        cli.main(["fit", tiny_config, "--out", str(tmp_path / "cli-run"), "--set", "train.blas=mkl"])
    assert exit_.value.code == 2 and not (tmp_path / "cli-run").exists()
    assert "error: train.blas = mkl: the mkl package is not installed" in capsys.readouterr().err


def test_a_bad_blas_value_is_a_one_line_error(tiny_config, tmp_path):
    r = subprocess.run([sys.executable, "-m", "mbtrain", "fit", tiny_config, "--out", str(tmp_path / "run"),
                        "--set", "train.blas=atlas"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and "train.blas" in r.stderr and "auto, numpy, mkl" in r.stderr
    assert not (tmp_path / "run").exists()


@needs_mkl
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("out_order", ["C", "F"])
def test_products_through_mkl_equal_a_float64_reference(dtype, out_order):
    rng = np.random.default_rng(3)
    K, n, m = 33, 70, 20
    A, W = rng.standard_normal((K, n)).astype(dtype), rng.standard_normal((m, n)).astype(dtype)
    dZ = rng.standard_normal((K, m)).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    close = lambda got, want: np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    f64 = lambda a: a.astype(np.float64)
    with gemm.using("mkl"):
        for a, b in [(A, W.T), (dZ, W), (dZ.T, A), (np.asfortranarray(A), W.T)]:   # the model's products
            out = np.zeros((a.shape[0], b.shape[1]), dtype, order=out_order)
            assert gemm.matmul(a, b, out=out) is out
            close(out, f64(a) @ f64(b))
        C = np.asarray(rng.standard_normal((m, n)).astype(dtype), order=out_order)
        want = f64(C) - 0.1 * (f64(dZ).T @ f64(A))
        gemm.update(C, dZ, A, alpha=-0.1)
        close(C, want)
        Z = rng.standard_normal((K, m)).astype(dtype)
        want = f64(Z) + f64(A) @ f64(W).T
        gemm.add_product(Z, A, W)
        close(Z, want)


@needs_mkl
def test_a_step_under_mkl_runs_every_product_through_mkl(monkeypatch):
    """Not numpy's matmul, and not numpy's gemm: each product's routine is MKL's (evaluation's too)."""
    f32 = np.dtype(np.float32)
    mkl_routine, numpy_routine = gemm._library_routine(f32, "mkl"), gemm._library_routine(f32, "numpy")
    assert mkl_routine is not None and mkl_routine is not numpy_routine
    calls = []
    real = gemm._product
    monkeypatch.setattr(gemm, "_product", lambda name, fn, *a: (calls.append((name, fn)), real(name, fn, *a)))
    real_plan = gemm.Product.__call__                      # the step's updates: prepared gemm calls
    monkeypatch.setattr(gemm.Product, "__call__", lambda plan, *a, **k: (real_plan(plan, *a, **k),
                                                                         calls.append((plan.name, plan.fn))))
    monkeypatch.setattr(step, "FUSE_MIN_WEIGHTS", 0)
    monkeypatch.setattr(gemm, "MKL_MIN_WORK", 0)          # this network's products are all small
    real_matmul, matrix_products = np.matmul, []
    def numpys(a, b, **kw):                                # rowops' sums are matrix-vector products
        matrix_products.extend([1] if a.ndim == b.ndim == 2 else [])
        return real_matmul(a, b, **kw)
    monkeypatch.setattr(np, "matmul", numpys)
    model = _model(np.float32)
    with gemm.using("mkl"):
        train_step = step.TrainStep(model, optim.SGD(model.params, lr=0.1))
        assert train_step.fused
        train_step(*_batch(np.float32))
        predicted = model.predict(_batch(np.float32)[0])            # evaluation: 3 more products
    with gemm.using("numpy"):
        np.testing.assert_allclose(predicted, model.predict(_batch(np.float32)[0]), rtol=1e-5, atol=1e-6)
    assert len(matrix_products) == 3                      # only the numpy run of predict
    # 3 layers: 3 forward products, 2 error products, 3 bias updates, 3 weight updates
    assert sorted(name for name, _ in calls) == ["bias"] * 3 + ["matmul"] * 8 + ["update"] * 3
    assert all(fn is mkl_routine for _, fn in calls)


@needs_mkl
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_through_mkl_equal_the_per_sample_loop_and_numpys(dtype):
    X, Y = _batch(dtype, K=16)
    grads = {}
    for library in ("numpy", "mkl"):
        model = _model(dtype)
        with gemm.using(library):
            model.forward(X)
            model.loss_and_backward(Y)
        grads[library] = [g.copy() for g in model.grads]
    _, per_sample = bench.per_sample_gradients(_model(dtype), X, Y)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    assert bench.gradient_difference(grads["mkl"], per_sample) <= tol
    assert bench.gradient_difference(grads["mkl"], grads["numpy"]) <= tol


@needs_mkl
def test_under_mkl_numpys_blas_runs_on_one_thread_and_mkl_on_train_threads():
    lib = lambda api: next(i["num_threads"] for i in threadpool_info() if i.get("internal_api") == api)
    with blas.limit(1, "mkl"):
        assert gemm.selected() == "mkl" and blas.info()["library"] == "mkl"
        assert lib("mkl") == 1 and lib("openblas") == 1
    with blas.limit(0, "auto"):
        assert gemm.selected() == "mkl" and lib("openblas") == 1
    assert gemm.selected() == "numpy" and blas.info()["library"] == "openblas"


def _fit_weights(config, out, *overrides):
    r = subprocess.run([sys.executable, "-m", "mbtrain", "fit", config, "--out", str(out), "--quiet", "--json",
                        *[a for o in overrides for a in ("--set", o)]], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    products = json.loads((out / "run.json").read_text())["blas"]["products"]
    assert products == next(o.split("=")[1] for o in overrides if o.startswith("train.blas="))
    with np.load(out / "checkpoints" / "last.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k[0] in "Wb" and k[1:].isdigit()}, json.loads(r.stdout)


@needs_mkl
def test_a_run_through_mkl_is_deterministic_and_close_to_numpys(tiny_config, tmp_path):
    # plain SGD (the fused step), hidden products of 16 x 1024 x 1024 multiply-adds: through MKL
    wide = ["train.momentum=0", "train.lr=0.05", "model.layers=[8,1024,1024,3]"]
    assert 16 * 1024 * 1024 >= gemm.MKL_MIN_WORK
    first, summary = _fit_weights(tiny_config, tmp_path / "a", *wide, "train.blas=mkl", "train.threads=2")
    again, _ = _fit_weights(tiny_config, tmp_path / "b", *wide, "train.blas=mkl", "train.threads=2")
    numpys, _ = _fit_weights(tiny_config, tmp_path / "c", *wide, "train.blas=numpy", "train.threads=2")
    assert first and first.keys() == again.keys() == numpys.keys()
    for k in first:
        assert np.array_equal(first[k], again[k]), k
        np.testing.assert_allclose(first[k], numpys[k], rtol=1e-3, atol=1e-4)
    assert summary["test"]["acc"] > 0.8


@needs_mkl
def test_bench_reports_mkl_as_the_library_of_the_products(tiny_config):
    r = subprocess.run([sys.executable, "-m", "mbtrain", "bench", tiny_config, "--steps", "3", "--json",
                        "--set", "train.blas=mkl"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["blas"]["library"] == "mkl" and out["gradients_match"]
    r = subprocess.run([sys.executable, "-m", "mbtrain", "bench", tiny_config, "--steps", "3",
                        "--set", "train.blas=mkl"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    head = (r.stdout + r.stderr).splitlines()[0]
    assert "BLAS mkl " in head and "(None)" not in head and "on numpy's" in head


@needs_mkl
def test_under_mkl_small_products_stay_with_numpys_blas(monkeypatch):
    """Products of fewer than MKL_MIN_WORK multiply-adds (where MKL's call costs more) run through
    numpy's BLAS, larger ones through MKL; the results are the same products either way."""
    f32 = np.dtype(np.float32)
    mkl_routine, numpy_routine = gemm._library_routine(f32, "mkl"), gemm._library_routine(f32, "numpy")
    calls = []
    real = gemm._product
    monkeypatch.setattr(gemm, "_product", lambda name, fn, *a: (calls.append(fn), real(name, fn, *a)))
    rng = np.random.default_rng(5)
    K, n, m = 16, 32, 8                                   # 4096 multiply-adds per product
    A, W, dZ = (rng.standard_normal(s).astype(np.float32) for s in ((K, n), (m, n), (K, m)))
    for limit, routine in ((K * n * m + 1, numpy_routine), (K * n * m, mkl_routine)):
        monkeypatch.setattr(gemm, "MKL_MIN_WORK", limit)
        calls.clear()
        with gemm.using("mkl"):
            assert gemm.library_of(K * n * m) == ("numpy" if routine is numpy_routine else "mkl")
            Z = gemm.matmul(A, W.T, out=np.empty((K, m), np.float32))
            C = W.copy()
            gemm.update(C, dZ, A, alpha=-0.5)
            gemm.add_product(Z, A, W)
        assert calls[-2:] == [routine, routine] and (len(calls) == 3) == (routine is mkl_routine)
        np.testing.assert_allclose(Z, 2 * (A.astype(np.float64) @ W.T), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(C, W - 0.5 * (dZ.T.astype(np.float64) @ A), rtol=1e-5, atol=1e-5)
    with gemm.using("numpy"):
        assert gemm.library_of(10**12) == "numpy"


@needs_mkl
def test_a_prepared_product_follows_the_selected_library(monkeypatch):
    """A gemm.Product made while numpy's BLAS runs the products calls MKL's gemm once MKL is selected,
    and numpy's again after; each call makes the same product."""
    f32 = np.dtype(np.float32)
    mkl_routine, numpy_routine = gemm._library_routine(f32, "mkl"), gemm._library_routine(f32, "numpy")
    monkeypatch.setattr(gemm, "MKL_MIN_WORK", 0)
    rng = np.random.default_rng(8)
    C, A, B = (rng.standard_normal(s).astype(np.float32) for s in ((4, 5), (6, 4), (6, 5)))
    want = C.astype(np.float64)
    with gemm.using("numpy"):
        plan = gemm.Product("update", C, A, True, B, False)
        assert plan.fn is numpy_routine
        for library, routine in (("mkl", mkl_routine), ("numpy", numpy_routine)):
            with gemm.using(library):
                plan(-0.5, 1.0)
            assert plan.fn is routine
            want = want - 0.5 * (A.T.astype(np.float64) @ B.astype(np.float64))
            np.testing.assert_allclose(C, want, rtol=1e-5, atol=1e-5)
