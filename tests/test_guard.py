"""Divergence (exit 3, epoch and step named, last good checkpoint kept) and global-norm clipping."""

from __future__ import annotations

import json
import os
import re
import warnings

import numpy as np
import pytest
import yaml

from conftest import make_blobs
from killing import mbtrain, npz_arrays
from mbtrain import guard
from mbtrain.data import epoch_order
from mbtrain.errors import Diverged


def grads_like(rng, dtype=np.float32):
    return [rng.standard_normal(s).astype(dtype) for s in ((4, 3), (4,), (2, 4), (2,))]


def test_norm_and_clipping_match_the_formula():
    rng = np.random.default_rng(0)
    grads = grads_like(rng)
    original = [g.astype(np.float64) for g in grads]
    flat = np.concatenate([g.ravel() for g in original])
    want = float(np.sqrt(np.sum(flat * flat)))             # global L2 norm, in float64
    clip = want / 3
    norm = guard.check_step(0.5, grads, clip)
    assert norm == pytest.approx(want, rel=1e-6)
    for g, o in zip(grads, original):                      # every array scaled by clip / norm
        np.testing.assert_allclose(g, o * (clip / want), rtol=1e-6)
    after = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    assert after == pytest.approx(clip, rel=1e-6)


def test_no_clipping_below_the_limit_or_when_off():
    rng = np.random.default_rng(1)
    for clip in (0.0, 1e6):
        grads = grads_like(rng)
        before = [g.copy() for g in grads]
        guard.check_step(0.5, grads, clip)
        assert all(np.array_equal(a, b) for a, b in zip(grads, before))


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_loss_diverges(loss):
    with pytest.raises(Diverged, match="loss is"):
        guard.check_step(loss, grads_like(np.random.default_rng(2)), 0.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_gradient_diverges_naming_the_array(bad):
    grads = grads_like(np.random.default_rng(3))
    grads[3][1] = bad                                      # db1
    with pytest.raises(Diverged, match=r"gradient db1 has a non-finite value"), warnings.catch_warnings():
        warnings.simplefilter("error")                    # and no floating-point warning on the way
        guard.check_step(0.5, grads, 0.0)


def test_the_fused_steps_voucher_overflows_without_a_warning():
    """vouch_for_fused_sgd answers False for errors or inputs whose norms overflow, silently."""
    rng = np.random.default_rng(5)
    dZ, A = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 5)).astype(np.float32)
    assert guard.vouch_for_fused_sgd(0.5, [dZ], [A])
    A[0, 0] = 3e20                                         # ||A||^2 overflows float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not guard.vouch_for_fused_sgd(0.5, [dZ], [A])
        A[0, 0] = np.nan
        assert not guard.vouch_for_fused_sgd(0.5, [dZ], [A])


def test_huge_finite_gradient_is_not_divergence():
    """A float32 sum of squares overflows at ~1.8e19; the norm is then taken in float64."""
    grads = grads_like(np.random.default_rng(4))
    grads[0][0, 0] = 3e20
    with warnings.catch_warnings():
        warnings.simplefilter("error")                    # the overflow is expected: no warning printed
        norm = guard.check_step(0.5, grads, 1.0)
    assert norm == pytest.approx(3e20, rel=1e-6)
    assert np.isfinite(grads[0]).all() and abs(grads[0][0, 0]) == pytest.approx(1.0, rel=1e-5)


def test_divergence_exits_3_naming_epoch_and_step_and_keeps_the_checkpoint(tmp_path):
    """One sample of huge (finite) features overflows the forward pass to nan at a known step."""
    x, y = make_blobs(120, 8, 3, seed=2)
    x[7] = 3e38
    np.savez(tmp_path / "div.npz", x=x, y=y)
    cfg = {"seed": 1, "data": {"train": str(tmp_path / "div.npz"), "validation": 0},
           "model": {"layers": [8, 6, 3], "activation": "identity"},
           "train": {"epochs": 2, "batch_size": 10, "lr": 0.1}, "checkpoint": {"every_steps": 1}}
    (tmp_path / "div.yaml").write_text(yaml.safe_dump(cfg))
    # the step of epoch 1 whose minibatch holds sample 7, recomputed from the shuffle rule
    step = int(np.flatnonzero(epoch_order(1, 0, 120) == 7)[0]) // 10 + 1
    run = tmp_path / "run"
    r = mbtrain("fit", str(tmp_path / "div.yaml"), "--out", str(run), "--quiet")
    assert r.returncode == 3, r.stderr
    last = os.path.join(str(run), "checkpoints", "last.npz")
    assert r.stderr.splitlines() == [
        f"error: training diverged at epoch 1, step {step} (global step {step}): loss is nan; "
        f"the last good checkpoint is kept: {last}"]
    saved = npz_arrays(last)
    assert json.loads(str(saved["meta"]))["step"] == step - 1
    assert all(np.isfinite(saved[k]).all() for k in saved if k.startswith(("W", "b")))
    assert re.search(r"Traceback", r.stderr) is None


def test_fit_clips_the_update_by_global_norm(tmp_path, tiny_data):
    """One full-batch SGD step with clip_norm: W' = W - lr * g * clip / ||g||, g recomputed here."""
    from mbtrain import train
    from mbtrain.config import load_config
    train_path, _ = tiny_data
    base = {"seed": 4, "data": {"train": train_path, "validation": 0},
            "model": {"layers": [8, 5, 3], "activation": "sigmoid"},
            "train": {"epochs": 1, "batch_size": 240, "lr": 2.0, "clip_norm": 0.01}}
    cfg = load_config(None, base=base)
    model = train.build_model(cfg)
    start = [p.copy() for p in model.params]
    with np.load(train_path) as z:
        X, labels = z["x"][epoch_order(4, 0, 240)], z["y"][epoch_order(4, 0, 240)]
    model.forward(X)
    model.loss_and_backward(np.eye(3, dtype=np.float32)[labels])
    g = [d.astype(np.float64) for d in model.grads]
    norm = np.sqrt(sum(float(np.sum(d * d)) for d in g))
    assert norm > 0.01                                  # so the clip is active
    from mbtrain import runs
    train.fit(cfg, runs.create(str(tmp_path / "run"), None), quiet=True)
    got = npz_arrays(str(tmp_path / "run" / "checkpoints" / "last.npz"))
    for l, (p0, d) in enumerate(zip(start, g)):
        name = f"{'W' if l % 2 == 0 else 'b'}{l // 2}"
        np.testing.assert_allclose(got[name], p0 - 2.0 * d * (0.01 / norm), rtol=1e-5, atol=1e-7)


def test_the_voucher_bounds_the_batch_from_input_bound_without_reading_it():
    """With input_bound, ||X||^2 <= K n bound^2 replaces the pass over the batch (inputs[0])."""
    rng = np.random.default_rng(6)
    dZ, X = rng.standard_normal((4, 3)).astype(np.float32), rng.uniform(0, 1, (4, 5)).astype(np.float32)
    assert guard.vouch_for_fused_sgd(0.5, [dZ], [X], input_bound=1.0)
    X[0, 0] = np.nan                                      # not read when a bound is given ...
    assert guard.vouch_for_fused_sgd(0.5, [dZ], [X], input_bound=1.0)
    assert not guard.vouch_for_fused_sgd(0.5, [dZ], [X])  # ... and read without one
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not guard.vouch_for_fused_sgd(0.5, [dZ], [X], input_bound=1e38)   # beyond float32 range
    # only the batch: a hidden layer's input is always read
    A = rng.standard_normal((4, 3)).astype(np.float32)
    A[1, 1] = np.inf
    assert not guard.vouch_for_fused_sgd(0.5, [dZ, dZ], [X, A], input_bound=1.0)
