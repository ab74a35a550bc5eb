"""One SGD step worked by hand on a tiny net: momentum, Nesterov and weight decay."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mbtrain.model import MLP
from mbtrain.optim import SGD


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


@pytest.mark.parametrize("nesterov", [False, True])
def test_two_steps_with_momentum_and_weight_decay(nesterov):
    lr, mu, lam = 0.5, 0.9, 0.01
    net = tiny_net()
    opt = SGD(net.params, lr=lr, momentum=mu, nesterov=nesterov, weight_decay=lam)
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


def test_plain_sgd_is_w_minus_lr_grad():
    net = tiny_net()
    opt = SGD(net.params, lr=3.0)
    gw1, gw2, gb = by_hand_gradient(0.5, -0.25, 0.1)
    net.forward(X)
    net.loss_and_backward(Y)
    opt.step(net.grads)
    np.testing.assert_allclose(net.params[0], [[0.5 - 3.0 * gw1, -0.25 - 3.0 * gw2]], rtol=1e-14)
    np.testing.assert_allclose(net.params[1], [0.1 - 3.0 * gb], rtol=1e-14)
