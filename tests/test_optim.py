"""One SGD step worked by hand on a tiny net: momentum, Nesterov and weight decay; numpy's steps
against BLAS's (axpy, axpby) on a packed model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mbtrain import gemm, optim
from mbtrain.model import MLP
from mbtrain.optim import SGD

# numpy's multiply-and-subtract, and one BLAS axpy per piece where numpy's BLAS has it (train.threads = 1)
AXPY = [False] + ([True] if gemm.axpy_available(np.float64) else [])


def tiny_net():
    """A 2-1 network, sigmoid output, quadratic cost: z = w.x + b, C = (s(z) - y)^2 / 2."""
    W = np.array([[0.5, -0.25]])
    b = np.array([0.1])
    return MLP([W, b], "sigmoid", "sigmoid_quadratic")


X = np.array([[1.0, 2.0]])
Y = np.array([[1.0]])


def by_hand_gradient(w1, w2, b):
    z = w1 * 1.0 + w2 * 2.0 + b
    s = 1 / (1 + math.exp(-z))
    delta = (s - 1.0) * s * (1 - s)                      # dC/dz, K = 1
    return delta * 1.0, delta * 2.0, delta


def test_first_step_numbers():
    # z = 0.5 - 0.5 + 0.1 = 0.1; s = 0.52497918747894; s (1 - s) = 0.24937604; delta = (s - 1) s (1 - s) = -0.11845881
    gw1, gw2, gb = by_hand_gradient(0.5, -0.25, 0.1)
    assert gb == pytest.approx(-0.11845881, abs=1e-8)
    net = tiny_net()
    net.forward(X)
    net.loss_and_backward(Y)
    np.testing.assert_allclose(net.grads[0], [[gw1, gw2]], rtol=1e-14)
    np.testing.assert_allclose(net.grads[1], [gb], rtol=1e-14)


@pytest.mark.parametrize("level1", [False] + ([True] if gemm.level1(np.float64) is not None else []))
@pytest.mark.parametrize("nesterov", [False, True])
def test_two_steps_with_momentum_and_weight_decay(nesterov, level1):
    lr, mu, lam = 0.5, 0.9, 0.01
    net = tiny_net()
    opt = SGD(net.params, lr=lr, momentum=mu, nesterov=nesterov, weight_decay=lam, blas_axpy=True, level1=level1)
    assert not opt.axpy and (opt.level1 is not None) == level1    # BLAS axpy/axpby, or numpy's steps
    w1, w2, b = 0.5, -0.25, 0.1
    v = [0.0, 0.0, 0.0]
    for _ in range(2):
        net.forward(X)
        net.loss_and_backward(Y)
        opt.step(net.grads)
        gw1, gw2, gb = by_hand_gradient(w1, w2, b)
        g = [gw1 + lam * w1, gw2 + lam * w2, gb]           # decay on weights only
        v = [mu * vi + gi for vi, gi in zip(v, g)]
        step = [gi + mu * vi for gi, vi in zip(g, v)] if nesterov else v
        w1, w2, b = w1 - lr * step[0], w2 - lr * step[1], b - lr * step[2]
        np.testing.assert_allclose(net.params[0], [[w1, w2]], rtol=1e-13)
        np.testing.assert_allclose(net.params[1], [b], rtol=1e-13)


@pytest.mark.parametrize("axpy", AXPY)
def test_plain_sgd_is_w_minus_lr_grad(axpy):
    net = tiny_net()
    opt = SGD(net.params, lr=3.0, blas_axpy=axpy)
    assert opt.axpy == axpy
    gw1, gw2, gb = by_hand_gradient(0.5, -0.25, 0.1)
    net.forward(X)
    net.loss_and_backward(Y)
    opt.step(net.grads)
    np.testing.assert_allclose(net.params[0], [[0.5 - 3.0 * gw1, -0.25 - 3.0 * gw2]], rtol=1e-14)
    np.testing.assert_allclose(net.params[1], [0.1 - 3.0 * gb], rtol=1e-14)


LEVEL1 = gemm.level1(np.float32) is not None and gemm.level1(np.float64) is not None


def packed_nets(dtype, count):
    """`count` equal models with a column-major W0 (mbtrain.model.weight_order), packed into one buffer."""
    from mbtrain.model import init_params
    layers = [300, 100, 200, 10]                    # 52,310 parameters
    return [MLP(init_params(layers, "he", "zeros", "relu", np.random.default_rng(0), dtype), "relu",
                "softmax_cross_entropy") for _ in range(count)]


def train_side_by_side(nets, opts, steps=3):
    rng = np.random.default_rng(3)
    for _ in range(steps):
        X = rng.standard_normal((16, nets[0].layers[0])).astype(nets[0].dtype)
        Y = np.eye(10, dtype=nets[0].dtype)[rng.integers(0, 10, 16)]
        for net, opt in zip(nets, opts):
            net.forward(X)
            net.loss_and_backward(Y)
            opt.step(net.grads)


@pytest.mark.skipif(len(AXPY) < 2, reason="numpy's BLAS axpy not found")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_axpy_step_is_numpys_up_to_rounding_on_a_packed_model(monkeypatch, dtype):
    nets = packed_nets(dtype, 2)
    opts = [SGD(net.params, lr=0.1, blas_axpy=axpy) for net, axpy in zip(nets, (False, True))]
    assert opts[1].axpy and not opts[0].axpy
    calls = []
    real = gemm.AxpyPlan.__call__
    monkeypatch.setattr(gemm.AxpyPlan, "__call__", lambda plan, alpha: (calls.extend(y.size for y, _ in plan.pairs),
                                                                        real(plan, alpha)))
    train_side_by_side(nets, opts)
    assert len(calls) == 3 * 2 and sum(calls) >= 3 * 52_310       # two flat.CHUNK pieces, every step
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(nets[0].params, nets[1].params):
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol)


@pytest.mark.skipif(not LEVEL1, reason="numpy's BLAS axpy/axpby not found")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum, nesterov, weight_decay",
                         [(0.9, False, 0.0), (0.9, True, 0.0), (0.9, False, 1e-3), (0.9, True, 1e-3), (0.0, False, 1e-3)])
def test_the_level1_step_is_numpys_up_to_rounding_on_a_packed_model(monkeypatch, dtype, momentum, nesterov,
                                                                     weight_decay):
    """Pieces of 1,000 entries (not a divisor of any array's size) over a column-major W0."""
    monkeypatch.setattr(optim._ArrayPieces, "PIECE_BYTES", 1000 * np.dtype(dtype).itemsize)
    nets = packed_nets(dtype, 2)
    opts = [SGD(net.params, lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                level1=level1) for net, level1 in zip(nets, (False, True))]
    assert opts[0].level1 is None and opts[1].level1 is not None
    grads = [g.copy() for g in nets[1].grads]
    train_side_by_side(nets, opts)
    pieces = opts[1].level1.pieces._pieces
    assert len(pieces) == sum(-(-p.size // 1000) for p in nets[1].params)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(nets[0].params + opts[0].velocity, nets[1].params + opts[1].velocity):
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol)
    assert any(not np.array_equal(a, b) for a, b in zip(grads, nets[1].grads))   # gradients were made ...
    nets[1].forward(np.ones((2, 300), dtype))
    nets[1].loss_and_backward(np.eye(10, dtype=dtype)[:2])
    before = [g.copy() for g in nets[1].grads]
    opts[1].step(nets[1].grads)
    for a, b in zip(before, nets[1].grads):                          # ... and a step only reads them
        np.testing.assert_array_equal(a, b)


def test_the_level1_step_rejects_gradients_laid_out_unlike_the_parameters():
    if not LEVEL1:
        pytest.skip("numpy's BLAS axpy/axpby not found")
    net = packed_nets(np.float32, 1)[0]
    opt = SGD(net.params, lr=0.1, momentum=0.9)
    grads = [np.ascontiguousarray(g) for g in net.grads]             # W0 row-major, its parameter column-major
    with pytest.raises(ValueError, match="gradient 0"):
        opt.step(grads)


def test_make_uses_the_axpy_step_on_one_blas_thread_only():
    from types import SimpleNamespace
    params = [np.zeros((3, 2), np.float32), np.zeros(3, np.float32)]
    t = SimpleNamespace(optimizer="sgd", lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, threads=1)
    assert optim.make(t, params).axpy == gemm.axpy_available(np.float32)
    for threads in (0, 2):
        t.threads = threads
        assert not optim.make(t, params).axpy
