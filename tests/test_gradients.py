"""The vectorized gradients against two independent references, for every activation x output:
the explicit sum over samples of delta_k a_k^T (the textbook loop) and central finite differences."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mbtrain.model import MLP, init_params

# ---- an independent, per-sample reference written from the formulas, sharing no code with mbtrain

REF_ACT = {
    "sigmoid": (lambda z: 1 / (1 + np.exp(-z)), lambda z: np.exp(-z) / (1 + np.exp(-z)) ** 2),
    "tanh": (np.tanh, lambda z: 1 / np.cosh(z) ** 2),
    "relu": (lambda z: np.where(z > 0, z, 0.0), lambda z: np.where(z > 0, 1.0, 0.0)),
    "leaky_relu": (lambda z: np.where(z > 0, z, 0.01 * z), lambda z: np.where(z > 0, 1.0, 0.01)),
    "identity": (lambda z: z, lambda z: np.ones_like(z)),
}


def ref_cost(z, y, output):
    """Per-sample cost C_k for output-layer z (m,) and target y (m,)."""
    if output == "softmax_cross_entropy":
        p = np.exp(z) / np.exp(z).sum()
        return -np.sum(y * np.log(p))
    s = 1 / (1 + np.exp(-z))
    if output == "sigmoid_cross_entropy":
        return -np.sum(y * np.log(s) + (1 - y) * np.log(1 - s))
    return 0.5 * np.sum((s - y) ** 2)                            # sigmoid_quadratic


def ref_output_delta(z, y, output):
    """dC_k/dz for one sample, derived by hand for each output/cost pair."""
    if output == "softmax_cross_entropy":
        return np.exp(z) / np.exp(z).sum() - y
    s = 1 / (1 + np.exp(-z))
    if output == "sigmoid_cross_entropy":
        return s - y
    return (s - y) * s * (1 - s)


def ref_forward(Ws, bs, x, act):
    """Per-sample forward: lists of z and a for one sample x (n0,)."""
    f, _ = REF_ACT[act]
    zs, as_ = [], [x]
    for l, (W, b) in enumerate(zip(Ws, bs)):
        z = W @ as_[-1] + b
        zs.append(z)
        as_.append(f(z) if l < len(Ws) - 1 else z)
    return zs, as_


def ref_loss(Ws, bs, X, Y, act, output):
    """Mean over the batch of the per-sample costs."""
    return np.mean([ref_cost(ref_forward(Ws, bs, x, act)[0][-1], y, output) for x, y in zip(X, Y)])


def ref_gradients(Ws, bs, X, Y, act, output):
    """The textbook loop: for each sample, backpropagate delta and accumulate delta a^T / K."""
    _, fprime = REF_ACT[act]
    K = len(X)
    dWs = [np.zeros_like(W) for W in Ws]
    dbs = [np.zeros_like(b) for b in bs]
    for x, y in zip(X, Y):
        zs, as_ = ref_forward(Ws, bs, x, act)
        delta = ref_output_delta(zs[-1], y, output) / K
        for l in range(len(Ws) - 1, -1, -1):
            dWs[l] += np.outer(delta, as_[l])
            dbs[l] += delta
            if l > 0:
                delta = (Ws[l].T @ delta) * fprime(zs[l - 1])
    return dWs, dbs


def random_problem(act, output, seed):
    rng = np.random.default_rng(seed)
    depth = rng.integers(1, 4)
    layers = [int(v) for v in rng.integers(2, 7, size=depth + 1)]
    if output == "softmax_cross_entropy":
        layers[-1] = max(layers[-1], 2)
    K = int(rng.integers(1, 9))
    params = init_params(layers, "xavier", "normal", act, rng, np.float64)
    X = rng.uniform(-1, 1, size=(K, layers[0]))
    Y = np.eye(layers[-1])[rng.integers(0, layers[-1], size=K)]
    if output != "softmax_cross_entropy":
        Y = rng.uniform(0, 1, size=(K, layers[-1])) if seed % 2 else Y      # soft targets too
    return MLP(params, act, output), X, Y


CASES = list(itertools.product(REF_ACT, ["softmax_cross_entropy", "sigmoid_cross_entropy", "sigmoid_quadratic"],
                               range(3)))


@pytest.mark.parametrize("act,output,seed", CASES)
def test_vectorized_equals_per_sample_sum(act, output, seed):
    model, X, Y = random_problem(act, output, seed)
    model.forward(X)
    loss = model.loss_and_backward(Y)
    Ws, bs = [W.copy() for W in model.weights], [b.copy() for b in model.biases]
    dWs, dbs = ref_gradients(Ws, bs, X, Y, act, output)
    assert loss == pytest.approx(ref_loss(Ws, bs, X, Y, act, output), rel=1e-12)
    for l in range(len(Ws)):
        for got, want in ((model.grads[2 * l], dWs[l]), (model.grads[2 * l + 1], dbs[l])):
            scale = max(np.abs(want).max(), 1e-300)
            assert np.abs(got - want).max() / scale <= 1e-12


@pytest.mark.parametrize("act,output,seed", CASES)
def test_vectorized_equals_finite_differences(act, output, seed):
    model, X, Y = random_problem(act, output, seed)
    model.forward(X)
    model.loss_and_backward(Y)
    Ws, bs = [W.copy() for W in model.weights], [b.copy() for b in model.biases]
    eps = 1e-6
    for l in range(len(Ws)):
        for arrays, grad in ((Ws, model.grads[2 * l]), (bs, model.grads[2 * l + 1])):
            fd = np.zeros_like(grad)
            for idx in np.ndindex(grad.shape):
                old = arrays[l][idx]
                arrays[l][idx] = old + eps
                up = ref_loss(Ws, bs, X, Y, act, output)
                arrays[l][idx] = old - eps
                down = ref_loss(Ws, bs, X, Y, act, output)
                arrays[l][idx] = old
                fd[idx] = (up - down) / (2 * eps)
            scale = max(np.abs(fd).max(), np.abs(grad).max(), 1e-8)
            assert np.abs(fd - grad).max() / scale <= 1e-6


@pytest.mark.parametrize("act,output", [("relu", "softmax_cross_entropy"), ("tanh", "sigmoid_quadratic")])
def test_a_column_major_input_layer_gives_the_same_gradients(act, output):
    """An input layer of 64 to 512 neurons keeps W column-major (model.weight_order); same gradients."""
    rng = np.random.default_rng(5)
    layers, K = [5, 64, 4], 6
    model = MLP(init_params(layers, "xavier", "normal", act, rng, np.float64), act, output)
    assert model.weights[0].flags.f_contiguous and not model.weights[0].flags.c_contiguous
    assert model.grads[0].flags.f_contiguous and model.weights[1].flags.c_contiguous
    X, Y = rng.uniform(-1, 1, size=(K, layers[0])), np.eye(layers[-1])[rng.integers(0, layers[-1], size=K)]
    model.forward(X)
    model.loss_and_backward(Y)
    Ws, bs = [W.copy() for W in model.weights], [b.copy() for b in model.biases]
    dWs, dbs = ref_gradients(Ws, bs, X, Y, act, output)
    for l in range(len(Ws)):
        for got, want in ((model.grads[2 * l], dWs[l]), (model.grads[2 * l + 1], dbs[l])):
            assert np.abs(got - want).max() / np.abs(want).max() <= 1e-12


def test_dW_is_one_matrix_product_of_the_batch():
    """dW of the output layer is exactly dZ.T @ A_prev for the stored dZ and A_prev, and db is
    dZ.sum(0) up to the order of the additions (mbtrain.rowops sums through BLAS)."""
    model, X, Y = random_problem("tanh", "softmax_cross_entropy", 7)
    model.forward(X)
    model.loss_and_backward(Y)
    A_prev = model.A[-1] if len(model.A) else X
    dZ = model.dZ[-1]
    np.testing.assert_array_equal(model.grads[-2], dZ.T @ A_prev)
    # any order of K additions is within K eps sum|dZ| of the exact sum
    slack = len(dZ) * np.finfo(dZ.dtype).eps * np.abs(dZ).sum(axis=0)
    assert np.all(np.abs(model.grads[-1] - dZ.sum(axis=0)) <= slack)


def test_softmax_loss_is_stable_for_huge_logits():
    from mbtrain.losses import softmax_cross_entropy
    Z = np.array([[1000.0, 0.0, -1000.0], [0.0, 1e4, 0.0]], dtype=np.float32)
    Y = np.array([[1, 0, 0], [1, 0, 0]], dtype=np.float32)
    loss, dZ = softmax_cross_entropy(Z, Y)
    assert np.isfinite(loss) and np.isfinite(dZ).all()
    assert loss == pytest.approx((0.0 + 1e4) / 2)                # -log p_y per sample, averaged
    assert dZ.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_errors_through_a_boolean_mask_equal_a_float_mask_bit_for_bit(dtype):
    """ReLU's sigma' is kept as a boolean mask (faster to write and to multiply by); the errors
    passed back equal (dZ @ W) * (Z > 0) formed with a float 0/1 mask, to the last bit, signed
    zeros and NaN included."""
    rng = np.random.default_rng(3)
    layers = [6, 9, 8, 4]
    model = MLP(init_params(layers, "auto", "zeros", "relu", rng, dtype), "relu", "softmax_cross_entropy")
    X = rng.standard_normal((11, 6)).astype(dtype)
    Y = np.eye(4, dtype=dtype)[rng.integers(0, 4, size=11)]
    X[0, :] = np.nan                                             # a NaN row: its errors must stay NaN
    model.forward(X)
    model.loss_and_backward(Y)
    assert all(d.dtype == np.bool_ for d in model.dact)          # the mask path is the one tested
    for l in (2, 1):
        expected = (model.dZ[l] @ model.weights[l]) * (model.Z[l - 1] > 0).astype(dtype)
        np.testing.assert_array_equal(model.dZ[l - 1], expected)
        assert np.array_equal(np.signbit(model.dZ[l - 1]), np.signbit(expected))
