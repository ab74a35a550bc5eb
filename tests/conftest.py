"""Shared fixtures: a tiny synthetic classification dataset and a config that trains on it in a second."""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_blobs(n: int, features: int, classes: int, seed: int = 0):
    """Separable-ish Gaussian blobs: x (n, features) float32 in [0, 1], y (n,) int64."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0.2, 0.8, size=(classes, features))
    y = rng.integers(0, classes, size=n)
    x = centers[y] + 0.05 * rng.standard_normal((n, features))
    return np.clip(x, 0, 1).astype(np.float32), y.astype(np.int64)


@pytest.fixture
def tiny_data(tmp_path):
    """Paths of a train and a test .npz with 8 features and 3 classes."""
    x, y = make_blobs(240, 8, 3, seed=1)
    xt, yt = make_blobs(60, 8, 3, seed=1)
    train, test = tmp_path / "train.npz", tmp_path / "test.npz"
    np.savez(train, x=x[:240], y=y[:240])
    np.savez(test, x=xt, y=yt)
    return str(train), str(test)


@pytest.fixture
def tiny_config(tmp_path, tiny_data):
    """Path of a YAML config training 8-16-3 on tiny_data for 3 epochs."""
    train, test = tiny_data
    cfg = {
        "seed": 3,
        "data": {"train": train, "test": test, "validation": 40},
        "model": {"layers": [8, 16, 3], "activation": "tanh", "output": "softmax_cross_entropy"},
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.5, "momentum": 0.9},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)
