"""Hidden-layer activations: each is a pair (f, f') registered under its config name.

`forward(Z, out)` writes sigma(Z); `derivative(Z, A, out)` writes sigma'(Z), given A = sigma(Z)
(sigmoid and tanh are cheaper from A). All arrays are (K, m) and keep Z's dtype, except that an
activation whose sigma' is a 0/1 step (`step_derivative`, ReLU's) also writes it into a boolean
`out`: backpropagation then multiplies the errors by that mask, which at (256, 1024) took 125 us
for the comparison and the product against 167 us through a float32 mask (writing numpy's
comparison into float32 converts it in buffered chunks).

    mbtrain fit configs/mnist.yaml --set model.activation=tanh
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

LEAKY_SLOPE = 0.01

# 0, 1/2 and 1 as numpy scalars: numpy converts a Python number anew on every call, ~0.15 us of a
# ~0.7 us call on Nielsen's 10 x 30 arrays. These values are exact in float32 and float64, and a
# float64 array keeps its dtype against a float32 scalar, so results are the same bit for bit.
ZERO, HALF, ONE = np.float32(0), np.float32(0.5), np.float32(1)


class Activation(NamedTuple):
    forward: Callable      # (Z, out) -> A
    derivative: Callable   # (Z, A, out) -> sigma'(Z)
    step_derivative: bool = False   # sigma' is 0 or 1: derivative() may write a boolean out


def sigmoid(Z, out=None):
    # 0.5 * (1 + tanh(z / 2)) equals 1 / (1 + exp(-z)) and never overflows.
    out = np.multiply(Z, HALF, out=out)
    np.tanh(out, out=out)
    out += ONE
    out *= HALF
    return out


def sigmoid_prime(Z, A, out=None):
    out = np.subtract(ONE, A, out=out)    # 1 - a
    out *= A                               # a (1 - a)
    return out


def tanh(Z, out=None):
    return np.tanh(Z, out=out)


def tanh_prime(Z, A, out=None):
    out = np.multiply(A, A, out=out)
    np.subtract(ONE, out, out=out)         # 1 - a^2
    return out


def relu(Z, out=None):
    return np.maximum(Z, ZERO, out=out)


def relu_prime(Z, A, out=None):
    return np.greater(Z, ZERO, out=out) if out is not None else (Z > 0).astype(Z.dtype)


def leaky_relu(Z, out=None):
    out = np.multiply(Z, LEAKY_SLOPE, out=out)
    return np.maximum(Z, out, out=out)     # max(z, 0.01 z) for slope < 1


def leaky_relu_prime(Z, A, out=None):
    if out is None:
        out = np.empty_like(Z)
    np.greater(Z, ZERO, out=out)           # 1.0 where z > 0, else 0.0
    out *= 1 - LEAKY_SLOPE
    out += LEAKY_SLOPE
    return out


def identity(Z, out=None):
    if out is None:
        return Z.copy()
    np.copyto(out, Z)
    return out


def identity_prime(Z, A, out=None):
    if out is None:
        return np.ones_like(Z)
    out.fill(1)
    return out


ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Activation(sigmoid, sigmoid_prime),
    "tanh": Activation(tanh, tanh_prime),
    "relu": Activation(relu, relu_prime, step_derivative=True),
    "leaky_relu": Activation(leaky_relu, leaky_relu_prime),
    "identity": Activation(identity, identity_prime),
}


def get(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}") from None
