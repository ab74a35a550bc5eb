"""Exact resume: a run SIGKILLed anywhere and resumed ends bit-identical to one never interrupted.

Real subprocesses (`python -m mbtrain fit`) and real SIGKILLs, at moments chosen with the
MBTRAIN_TEST_PAUSE_AT hook (mbtrain/testhook.py): mid-epoch, at an epoch boundary, and at each
stage of a checkpoint or metrics write.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from conftest import ROOT, make_blobs
from killing import kill_at_pause, mbtrain, metrics_rows, npz_arrays

# 200 training samples / batch 16 = 13 steps per epoch (the last one of 8); 3 epochs = 39 steps;
# a mid-epoch checkpoint every 5 steps (5, 10, 15, 20, 25, 30, 35) besides each epoch's end.
STEPS_PER_EPOCH = 13


def reference_run(root, cfg: dict):
    """(config path, reference run dir): write the config and make its uninterrupted run."""
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ref = root / "reference"
    r = mbtrain("fit", str(path), "--out", str(ref), "--quiet")
    assert r.returncode == 0, r.stderr
    return str(path), str(ref)


def blobs_run(root, data_seed: int, cfg: dict):
    """reference_run of cfg on 240 blobs (8 features, 3 classes) in root/train.npz, 40 for validation."""
    x, y = make_blobs(240, 8, 3, seed=data_seed)
    np.savez(root / "train.npz", x=x, y=y)
    return reference_run(root, {**cfg, "data": {"train": str(root / "train.npz"), "validation": 40}})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config path, reference run dir): the config and its uninterrupted run."""
    return blobs_run(tmp_path_factory.mktemp("resume"), 5, {
        "seed": 11,
        "model": {"layers": [8, 12, 3], "activation": "tanh"},
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.3, "momentum": 0.9, "nesterov": True,
                  "weight_decay": 1e-4, "schedule": "cosine", "clip_norm": 1.0},
        "checkpoint": {"every_steps": 5},
    })


@pytest.fixture(scope="module")
def setup_stateful(tmp_path_factory):
    """A run whose continuation needs more state: Adam moments, dropout masks, standardization,
    block shuffling, reduce-on-plateau's lr scale and early stopping's counters; 64 hidden
    neurons, so W0, its gradient and Adam's moments are column-major (model.weight_order)."""
    root = tmp_path_factory.mktemp("resume_stateful")
    x, y = make_blobs(240, 8, 3, seed=6)
    y[::7] = (y[::7] + 1) % 3                     # label noise, so validation loss stalls
    np.savez(root / "train.npz", x=x, y=y)
    return reference_run(root, {
        "seed": 12,
        "data": {"train": str(root / "train.npz"), "validation": 40, "shuffle": "blocks",
                 "block_rows": 16, "buffer_rows": 64, "normalize": "standardize"},
        "model": {"layers": [8, 64, 3], "activation": "relu", "dropout": 0.3},
        "train": {"epochs": 12, "batch_size": 16, "lr": 0.05, "optimizer": "adam",
                  "schedule": "plateau", "lr_plateau_patience": 0, "lr_decay_factor": 0.5,
                  "early_stopping_patience": 3},
        "checkpoint": {"every_steps": 4},
    })


def meta_of(path: str) -> dict:
    meta = json.loads(str(npz_arrays(path)["meta"]))
    meta.pop("seconds")                           # wall-clock time, the one thing allowed to differ
    return meta


def assert_same_run(run: str, ref: str) -> None:
    """Weights, optimizer state, resume state and metrics identical; no temp files left."""
    for name in ("last.npz", "best.npz"):
        got, want = (npz_arrays(os.path.join(d, "checkpoints", name)) for d in (run, ref))
        assert sorted(got) == sorted(want)
        for key in want:
            if key not in ("meta", "config"):
                assert got[key].dtype == want[key].dtype
                assert np.array_equal(got[key], want[key]), f"{name} {key} differs"
                assert float(np.max(np.abs(got[key] - want[key]), initial=0.0)) == 0.0
        assert str(got["config"]) == str(want["config"])
        assert meta_of(os.path.join(run, "checkpoints", name)) == meta_of(os.path.join(ref, "checkpoints", name))
    rows, want_rows = metrics_rows(run), metrics_rows(ref)
    assert [r["epoch"] for r in rows] == [str(e) for e in range(1, len(want_rows) + 1)]
    assert rows == want_rows
    leftovers = [n for d in (run, os.path.join(run, "checkpoints")) for n in os.listdir(d) if n.endswith(".tmp")]
    assert leftovers == []


def test_reference_run_saves_mid_epoch(setup):
    cfg, ref = setup
    meta = meta_of(os.path.join(ref, "checkpoints", "last.npz"))
    assert (meta["epoch"], meta["epoch_step"], meta["step"]) == (3, 0, 3 * STEPS_PER_EPOCH)


@pytest.mark.parametrize("pause_at, resumes_from", [
    ("step:18", (1, 2, 15)),                       # (a) mid-epoch 2; last save was at step 15
    ("epoch:1", (1, 0, 13)),                       # (b) right after epoch 1 was committed
    ("write-data:last.npz:3", (0, 10, 10)),        # (c) during the epoch-1 last.npz write ...
    ("write-synced:last.npz:4", (1, 0, 13)),       # ... after its fsync, before the rename
    ("write-replaced:last.npz:4", (1, 2, 15)),     # ... renamed, folder not yet fsynced
    ("write-open:best.npz:2", (1, 12, 25)),        # ... during best.npz, epoch 2
    ("write-data:metrics.csv:3", (2, 9, 35)),      # ... during metrics.csv, epoch 3
])
def test_sigkill_then_resume_is_bit_identical(setup, tmp_path, pause_at, resumes_from):
    cfg, ref = setup
    run = str(tmp_path / "run")
    kill_at_pause("fit", cfg, "--out", run, "--quiet", pause_at=pause_at)
    last = os.path.join(run, "checkpoints", "last.npz")
    meta = meta_of(last)
    assert (meta["epoch"], meta["epoch_step"], meta["step"]) == resumes_from
    r = mbtrain("fit", "--resume", last, "--quiet")
    assert r.returncode == 0, r.stderr
    assert_same_run(run, ref)


def test_killed_twice_then_resumed(setup, tmp_path):
    """A resumed run killed again (during its own write) still ends identical."""
    cfg, ref = setup
    run = str(tmp_path / "run")
    last = os.path.join(run, "checkpoints", "last.npz")
    kill_at_pause("fit", cfg, "--out", run, "--quiet", pause_at="step:7")
    kill_at_pause("fit", "--resume", last, "--quiet", pause_at="write-data:last.npz:2")
    assert meta_of(last)["step"] == 10
    r = mbtrain("fit", "--resume", last, "--quiet")
    assert r.returncode == 0, r.stderr
    assert_same_run(run, ref)


@pytest.mark.parametrize("pause_at", ["step:30", "epoch:2", "write-synced:last.npz:9"])
def test_stateful_run_resumes_bit_identical(setup_stateful, tmp_path, pause_at):
    cfg, ref = setup_stateful
    meta = meta_of(os.path.join(ref, "checkpoints", "last.npz"))
    assert meta["lr_scale"] < 1.0                  # the plateau schedule did cut the lr
    from mbtrain.model import weight_order
    assert weight_order(0, 64) == "F"
    run = str(tmp_path / "run")
    last = os.path.join(run, "checkpoints", "last.npz")
    kill_at_pause("fit", cfg, "--out", run, "--quiet", pause_at=pause_at)
    r = mbtrain("fit", "--resume", last, "--quiet")
    assert r.returncode == 0, r.stderr
    assert_same_run(run, ref)


def test_sigkill_at_random_times_then_resume(setup, tmp_path):
    """No hook: kill the real fit after a random delay, wherever it happens to be, and resume."""
    cfg, ref = setup
    rng = random.Random(2026)
    for i in range(3):
        run = str(tmp_path / f"run{i}")
        last = os.path.join(run, "checkpoints", "last.npz")
        proc = subprocess.Popen([sys.executable, "-m", "mbtrain", "fit", cfg, "--out", run, "--quiet"],
                                cwd=ROOT, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if os.path.exists(last):                  # killed after the first save: resume
            r = mbtrain("fit", "--resume", last, "--quiet")
        else:                                     # killed before any save: start again
            r = mbtrain("fit", cfg, "--out", run, "--overwrite", "--quiet")
        assert r.returncode == 0, r.stderr
        assert_same_run(run, ref)


@pytest.fixture(scope="module")
def setup_plain(tmp_path_factory):
    """Plain SGD in float32: the step folds the update into the weight-gradient products (mbtrain.step),
    W0 column-major (64 neurons, model.weight_order) and W1 row-major."""
    return blobs_run(tmp_path_factory.mktemp("resume_plain"), 7, {
        "seed": 13,
        "model": {"layers": [8, 64, 3], "activation": "relu"},
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.1, "dtype": "float32", "fused_update": "on"},
        "checkpoint": {"every_steps": 5},
    })


def kill_mid_epoch_then_resume(cfg: str, ref: str, tmp_path) -> None:
    """SIGKILL `fit cfg` at step 18 (mid-epoch, after the step-15 checkpoint), resume, compare with ref."""
    run = str(tmp_path / "run")
    last = os.path.join(run, "checkpoints", "last.npz")
    kill_at_pause("fit", cfg, "--out", run, "--quiet", pause_at="step:18")
    r = mbtrain("fit", "--resume", last, "--quiet")
    assert r.returncode == 0, r.stderr
    assert_same_run(run, ref)


def test_fused_sgd_run_resumes_bit_identical(setup_plain, tmp_path):
    from mbtrain import gemm, optim, step
    from mbtrain.config import load_config
    from mbtrain.train import build_model
    cfg, ref = setup_plain
    c = load_config(cfg)
    model = build_model(c)
    if not gemm.available(np.float32):
        pytest.skip("numpy's BLAS gemm not found: the step cannot fuse here")
    assert step.TrainStep(model, optim.make(c.train, model.params), c.train.clip_norm, "on").fused
    kill_mid_epoch_then_resume(cfg, ref, tmp_path)


def test_sgd_axpy_run_resumes_bit_identical(tmp_path_factory, tmp_path):
    """Plain SGD, unfused, on one BLAS thread: the step is BLAS axpy (mbtrain.optim), with an
    exponential schedule so lr changes every step; SIGKILL mid-epoch, resume, same run as uninterrupted."""
    from mbtrain import gemm, optim
    from mbtrain.config import load_config
    from mbtrain.train import build_model
    if not gemm.axpy_available(np.float32):
        pytest.skip("numpy's BLAS axpy not found")
    cfg, ref = blobs_run(tmp_path_factory.mktemp("resume_axpy"), 9, {
        "seed": 17,
        "model": {"layers": [8, 64, 3], "activation": "relu"},
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.1, "dtype": "float32", "fused_update": "off",
                  "threads": 1, "schedule": "exponential", "lr_decay_factor": 0.5},
        "checkpoint": {"every_steps": 5},
    })
    c = load_config(cfg)
    assert optim.make(c.train, build_model(c).params).axpy
    kill_mid_epoch_then_resume(cfg, ref, tmp_path)
