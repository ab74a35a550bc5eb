"""data.normalize end to end: statistics in the checkpoint, applied by eval; prefetch leaves weights unchanged."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from killing import mbtrain, npz_arrays
from mbtrain import checkpoint, losses
from mbtrain.config import load_config
from mbtrain.errors import CheckpointError
from mbtrain.train import fit


def _fit(tiny_config, tmp_path, name, *overrides):
    cfg = load_config(tiny_config, ["train.epochs=2", *overrides])
    run_dir = str(tmp_path / name)
    os.makedirs(os.path.join(run_dir, "checkpoints"))
    fit(cfg, run_dir, quiet=True)
    return cfg, os.path.join(run_dir, "checkpoints", "last.npz")


def test_standardize_statistics_are_stored_and_eval_applies_them(tiny_config, tiny_data, tmp_path):
    cfg, last = _fit(tiny_config, tmp_path, "std", "data.normalize=standardize")
    with np.load(tiny_data[0]) as z:
        x_train = z["x"][:200].astype(np.float64)            # validation: the last 40 of 240
    ckpt = checkpoint.load(last)
    assert np.allclose(ckpt.normalization.shift, x_train.mean(0), rtol=1e-12)
    assert np.allclose(ckpt.normalization.scale, 1 / x_train.std(0), rtol=1e-10)
    # eval's loss recomputed by hand: standardize the test set, forward, softmax cross-entropy
    with np.load(tiny_data[1]) as z:
        x_test, y_test = z["x"], z["y"]
    A = ((x_test - x_train.mean(0)) / x_train.std(0)).astype(np.float32)
    W0, b0, W1, b1 = ckpt.params
    Z = np.tanh(A @ W0.T + b0) @ W1.T + b1
    Y = np.eye(3, dtype=np.float32)[y_test]
    expected = float(losses.get("softmax_cross_entropy").loss(Z, Y).mean())
    result = mbtrain("eval", last, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["loss"] == pytest.approx(expected, rel=1e-5)


def test_normalization_arrays_are_checksummed(tiny_config, tmp_path):
    _, last = _fit(tiny_config, tmp_path, "unit", "data.normalize=unit")
    arrays = npz_arrays(last)
    arrays["norm.scale"] = arrays["norm.scale"] * 2
    bad = tmp_path / "tampered.npz"
    np.savez(bad, **arrays)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoint.load(str(bad))


def test_a_checkpoint_without_its_statistics_is_refused(tiny_config, tmp_path):
    _, last = _fit(tiny_config, tmp_path, "unit", "data.normalize=unit")
    ckpt = checkpoint.load(last)
    ckpt.normalization = None
    bare = str(tmp_path / "bare.npz")
    checkpoint.save(ckpt, bare)
    with pytest.raises(CheckpointError, match="norm.shift is missing.*data.normalize = unit"):
        checkpoint.load(bare)


def test_prefetch_and_shuffles_train_bit_identical_weights(tiny_config, tmp_path):
    for shuffle in ("full", "blocks", "none"):
        _, on = _fit(tiny_config, tmp_path, f"{shuffle}-on", "data.prefetch=on", f"data.shuffle={shuffle}",
                     "data.block_rows=8", "data.buffer_rows=24")
        _, off = _fit(tiny_config, tmp_path, f"{shuffle}-off", "data.prefetch=off", f"data.shuffle={shuffle}",
                      "data.block_rows=8", "data.buffer_rows=24")
        for a, b in zip(checkpoint.load(on).params, checkpoint.load(off).params):
            assert np.array_equal(a, b)


def test_sigkill_mid_epoch_then_resume_with_prefetch_is_bit_identical(tmp_path):
    """Memory-mapped data (so data.prefetch: auto means on), standardize, blocks shuffle, killed mid-epoch."""
    import yaml
    from conftest import make_blobs
    from killing import kill_at_pause
    x, y = make_blobs(240, 8, 3, seed=6)
    os.makedirs(tmp_path / "npy")
    np.save(tmp_path / "npy" / "x.npy", x)
    np.save(tmp_path / "npy" / "y.npy", y)
    cfg = {"seed": 2, "data": {"train": str(tmp_path / "npy"), "validation": 40, "shuffle": "blocks",
                               "block_rows": 16, "buffer_rows": 48, "normalize": "standardize"},
           "model": {"layers": [8, 12, 3], "activation": "tanh"},
           "train": {"epochs": 2, "batch_size": 16, "lr": 0.3, "momentum": 0.9},
           "checkpoint": {"every_steps": 4}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    assert mbtrain("fit", str(path), "--out", ref, "--quiet").returncode == 0
    kill_at_pause("fit", str(path), "--out", run, "--quiet", pause_at="step:19")   # epoch 2, step 6
    resumed = mbtrain("fit", "--resume", os.path.join(run, "checkpoints", "last.npz"), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    got, want = (npz_arrays(os.path.join(d, "checkpoints", "last.npz")) for d in (run, ref))
    assert sorted(got) == sorted(want) and "norm.shift" in want
    for key in want:
        if key not in ("meta", "config"):
            assert np.array_equal(got[key], want[key]), key


def test_resume_refuses_a_different_normalize(tiny_config, tmp_path):
    _, last = _fit(tiny_config, tmp_path, "std", "data.normalize=standardize")
    r = mbtrain("fit", "--resume", last, "--set", "data.normalize=none", "--set", "train.epochs=3", "--quiet")
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: {last}: was trained with data.normalize = standardize, the config "
                                f"asks for none; resume with the same value")


def test_predict_applies_the_checkpoints_normalization(tiny_config, tiny_data, tmp_path):
    _, last = _fit(tiny_config, tmp_path, "unit", "data.normalize=unit")
    with np.load(tiny_data[0]) as z:
        x_train = z["x"][:200].astype(np.float64)
    with np.load(tiny_data[1]) as z:
        x_test = z["x"]
    lo, hi = x_train.min(0), x_train.max(0)
    W0, b0, W1, b1 = checkpoint.load(last).params
    Z = np.tanh(((x_test - lo) / (hi - lo)).astype(np.float32) @ W0.T + b0) @ W1.T + b1
    P = np.exp(Z - Z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    result = mbtrain("predict", last, tiny_data[1], "--proba")
    assert result.returncode == 0, result.stderr
    rows = [line.split(",") for line in result.stdout.strip().splitlines()]
    assert rows[0] == ["class", "p0", "p1", "p2"]
    table = np.array(rows[1:], dtype=np.float64)
    np.testing.assert_array_equal(table[:, 0], P.argmax(1))
    np.testing.assert_allclose(table[:, 1:], P, rtol=1e-4, atol=1e-6)
