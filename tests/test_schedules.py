"""Learning-rate schedules against their formulas, and the init scales against their variances."""

import math

import numpy as np
import pytest

from mbtrain import schedules
from mbtrain.config import load_config
from mbtrain.model import init_params


def _cfg(*sets):
    return load_config(None, ["train.lr=0.2", "train.epochs=10", *sets]).train


def test_step_schedule_drops_every_lr_step_epochs():
    t = _cfg("train.schedule=step", "train.lr_step_epochs=3", "train.lr_decay_factor=0.5")
    steps = 7
    got = [schedules.lr_at(t, e * steps + 2, steps) for e in range(10)]
    assert got == pytest.approx([0.2] * 3 + [0.1] * 3 + [0.05] * 3 + [0.025])


def test_exponential_schedule_is_factor_per_epoch():
    t = _cfg("train.schedule=exponential", "train.lr_decay_factor=0.9")
    assert schedules.lr_at(t, 0, 5) == pytest.approx(0.2)
    assert schedules.lr_at(t, 10, 5) == pytest.approx(0.2 * 0.81)
    assert schedules.lr_at(t, 12, 5) == pytest.approx(0.2 * 0.9 ** 2.4)


def test_cosine_schedule():
    t = _cfg("train.schedule=cosine")
    assert schedules.lr_at(t, 0, 4) == pytest.approx(0.2)
    assert schedules.lr_at(t, 20, 4) == pytest.approx(0.1)
    assert schedules.lr_at(t, 30, 4) == pytest.approx(0.1 * (1 + math.cos(math.pi * 0.75)))


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step", "exponential", "plateau"])
def test_warmup_multiplies_any_schedule(schedule):
    t = _cfg(f"train.schedule={schedule}", "train.warmup_epochs=2")
    plain = _cfg(f"train.schedule={schedule}")
    steps = 5                                       # warmup_steps = 10
    for step in (0, 4, 9, 10, 33):
        want = schedules.lr_at(plain, step, steps) * min(1.0, (step + 1) / 10)
        assert schedules.lr_at(t, step, steps) == pytest.approx(want)
    assert schedules.lr_at(t, 0, steps) == pytest.approx(0.2 / 10 if schedule != "cosine" else 0.02)


def test_plateau_scale_multiplies_lr():
    t = _cfg("train.schedule=plateau")
    assert schedules.lr_at(t, 17, 5, scale=0.01) == pytest.approx(0.002)


@pytest.mark.parametrize("init,var", [
    ("normal", lambda n, m: 1.0), ("scaled_normal", lambda n, m: 1.0 / n),
    ("xavier", lambda n, m: 2.0 / (n + m)), ("xavier_normal", lambda n, m: 2.0 / (n + m)),
    ("he", lambda n, m: 2.0 / n), ("he_uniform", lambda n, m: 2.0 / n)])
def test_init_variance(init, var):
    n, m = 400, 300
    W, b = init_params([n, m], init, "zeros", "relu", np.random.default_rng(0), np.float64)
    assert W.shape == (m, n) and not b.any()
    assert W.var() == pytest.approx(var(n, m), rel=0.03)
    assert abs(W.mean()) < 0.01 * math.sqrt(var(n, m)) * 10
    if init in ("xavier", "he_uniform"):
        bound = math.sqrt(6.0 / (n + m)) if init == "xavier" else math.sqrt(6.0 / n)
        assert np.abs(W).max() <= bound and np.abs(W).max() > 0.99 * bound
