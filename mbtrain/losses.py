"""Output layers fused with their losses: each returns (loss, dZ_out) for a minibatch.

The loss is the mean over the K samples of the per-sample cost, so dZ_out carries 1/K:
softmax + cross-entropy gives (P - Y) / K; sigmoid + cross-entropy gives (A - Y) / K;
sigmoid + quadratic (Nielsen's C = 1/2 ||a - y||^2) gives (A - Y) * sigma'(Z) / K;
identity + mean squared error (C = 1/m ||z - y||^2, the mean over the m outputs) gives
2 (Z - Y) / (K m). Sigmoid + cross-entropy is also the multi-label loss: Y (K, m) of 0/1,
each output an independent yes/no. Z, Y and dZ are (K, m).

    mbtrain fit configs/nielsen-ch1.yaml     # model.output: sigmoid_quadratic
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from mbtrain import rowops
from mbtrain.activations import ONE, sigmoid


class Output(NamedTuple):
    predict: Callable          # (Z, out) -> output activations A_L (probabilities)
    loss_and_delta: Callable   # (Z, Y, dZ_out) -> (mean loss: float, dZ_out (K, m))
    loss: Callable             # (Z, Y) -> per-sample losses (K,)


def softmax(Z, out=None):
    """Row-wise softmax, stable: exp(z - max z) / sum exp(z - max z)."""
    out = np.subtract(Z, rowops.row_max(Z)[:, None], out=out)
    np.exp(out, out=out)
    out /= rowops.row_sums(out)[:, None]
    return out


def log_softmax(Z):
    """Row-wise log-softmax via log-sum-exp: z - max z - log sum exp(z - max z)."""
    shifted = Z - Z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy_samples(Z, Y):
    return -(Y * log_softmax(Z)).sum(axis=1)


# The output error's exponentials start from s = z - max z no lower than this, exp(-69) ~ 2^-100
# (exp(-690) in float64): a confident network's logit gaps exceed 87, where exp(s) is subnormal in
# float32 (below 2^-126), and the products that take the error on (dZ^T A_prev, dZ @ W) then run on
# subnormal numbers, ~100x slower on x86. Late in keras-mnist-mlp's training ~12 such entries came
# a step, and 12 of them in a 128 x 10 error made its two products take 71 against 31 us
# (/work/notes/s11/subgemm.py). A probability of 2^-100 or less changes no sum it enters (the row's
# S >= 1); the loss takes the unclamped s. The clamp cost 0.9 us at 64 x 10, a compare-and-zero 3.9.
_LOG_FLOOR = {np.dtype(np.float32): np.float32(-69.0), np.dtype(np.float64): np.float64(-690.0)}


def softmax_cross_entropy(Z, Y, dZ=None):
    """Mean cross-entropy of softmax(Z) against Y, and dZ = (P - Y) / K, sharing one exp.

    With s = z - max z and S = sum exp(s) per row, log p = s - log S, so a sample's loss
    -y . log p = sum(y) log S - y . s, and P = exp(s) / S; no log of a probability is taken.
    Row maxima and sums go through mbtrain.rowops (numpy's own are slow on short rows).
    """
    K = Z.shape[0]
    dZ = np.subtract(Z, rowops.row_max(Z)[:, None], out=dZ)    # s = z - max z      (K, m)
    y_dot_s = float(np.vdot(Y, dZ))                            # sum_k y_k . s_k
    np.maximum(dZ, _LOG_FLOOR[dZ.dtype], out=dZ)               # no subnormal probability (see above)
    np.exp(dZ, out=dZ)
    S = rowops.row_sums(dZ)                                    # (K,)
    loss = (float(np.dot(rowops.row_sums(Y), np.log(S))) - y_dot_s) / K
    dZ /= S[:, None]                                           # P
    dZ -= Y                                                    # P - Y
    dZ /= K
    return loss, dZ


def sigmoid_cross_entropy_samples(Z, Y):
    # -y log s(z) - (1-y) log(1-s(z)) = max(z, 0) - z y + log(1 + exp(-|z|)), stable for any z.
    return (np.maximum(Z, 0) - Z * Y + np.log1p(np.exp(-np.abs(Z)))).sum(axis=1)


def sigmoid_cross_entropy(Z, Y, dZ=None):
    K = Z.shape[0]
    loss = float(sigmoid_cross_entropy_samples(Z, Y).sum()) / K
    dZ = sigmoid(Z, out=dZ)                                    # A
    dZ -= Y                                                    # A - Y
    dZ /= K
    return loss, dZ


def sigmoid_quadratic_samples(Z, Y):
    diff = sigmoid(Z) - Y
    return 0.5 * (diff * diff).sum(axis=1)


def sigmoid_quadratic(Z, Y, dZ=None):
    K = Z.shape[0]
    A = sigmoid(Z, out=dZ)                                     # A, in dZ's buffer when given
    prime = np.subtract(ONE, A)
    prime *= A                                                 # sigma'(Z) = a (1 - a)
    dZ = np.subtract(A, Y, out=A)                              # A - Y
    loss = 0.5 * float(np.vdot(dZ, dZ)) / K
    dZ *= prime
    dZ /= K
    return loss, dZ


def mse_samples(Z, Y):
    diff = Z - Y
    return (diff * diff).mean(axis=1)


def identity_mse(Z, Y, dZ=None):
    K, m = Z.shape
    dZ = np.subtract(Z, Y, out=dZ)                             # Z - Y
    loss = float((dZ * dZ).sum()) / (K * m)
    dZ *= Z.dtype.type(2.0 / (K * m))                          # 2 (Z - Y) / (K m)
    return loss, dZ


def identity(Z, out=None):
    if out is None:
        return Z.copy()
    np.copyto(out, Z)
    return out


OUTPUTS: dict[str, Output] = {
    "softmax_cross_entropy": Output(softmax, softmax_cross_entropy, softmax_cross_entropy_samples),
    "sigmoid_cross_entropy": Output(sigmoid, sigmoid_cross_entropy, sigmoid_cross_entropy_samples),
    "sigmoid_quadratic": Output(sigmoid, sigmoid_quadratic, sigmoid_quadratic_samples),
    "identity_mse": Output(identity, identity_mse, mse_samples),
}


def get(name: str) -> Output:
    try:
        return OUTPUTS[name]
    except KeyError:
        raise ValueError(f"unknown output {name!r}; expected one of {', '.join(OUTPUTS)}") from None
