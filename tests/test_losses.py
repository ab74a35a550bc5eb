"""Every output+loss pair: the loss against its textbook formula, dZ against finite differences."""

import numpy as np
import pytest

from mbtrain import losses


def _targets(output, rng, K, m):
    if output == "identity_mse":
        return rng.standard_normal((K, m))
    if output == "softmax_cross_entropy":
        return np.eye(m)[rng.integers(0, m, K)]
    return (rng.random((K, m)) < 0.4).astype(np.float64)       # multi-label 0/1 rows


def _by_formula(output, Z, Y):
    """The mean over samples of each per-sample cost, written out with explicit exp/log."""
    if output == "softmax_cross_entropy":
        P = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
        return np.mean(-np.sum(Y * np.log(P), axis=1))
    A = 1 / (1 + np.exp(-Z))
    if output == "sigmoid_cross_entropy":
        return np.mean(-np.sum(Y * np.log(A) + (1 - Y) * np.log(1 - A), axis=1))
    if output == "sigmoid_quadratic":
        return np.mean(0.5 * np.sum((A - Y) ** 2, axis=1))
    return np.mean((Z - Y) ** 2)                                # identity_mse: mean over K and m


@pytest.mark.parametrize("output", list(losses.OUTPUTS))
def test_loss_matches_formula_and_delta_matches_finite_differences(output):
    rng = np.random.default_rng(4)
    K, m = 5, 4
    Z = rng.standard_normal((K, m)) * 2
    Y = _targets(output, rng, K, m)
    out = losses.get(output)
    loss, dZ = out.loss_and_delta(Z.copy(), Y)
    assert loss == pytest.approx(_by_formula(output, Z, Y), rel=1e-12)
    assert out.loss(Z, Y).mean() == pytest.approx(loss, rel=1e-12)
    h = 1e-6
    numeric = np.zeros_like(Z)
    for i in np.ndindex(Z.shape):
        plus, minus = Z.copy(), Z.copy()
        plus[i] += h
        minus[i] -= h
        numeric[i] = (_by_formula(output, plus, Y) - _by_formula(output, minus, Y)) / (2 * h)
    np.testing.assert_allclose(dZ, numeric, rtol=1e-6, atol=1e-10)


def test_mse_delta_is_two_residuals_over_K_m_and_keeps_float32():
    Z = np.array([[1.0, 2.0], [0.0, -1.0]], np.float32)
    Y = np.array([[0.5, 2.0], [1.0, 1.0]], np.float32)
    loss, dZ = losses.identity_mse(Z.copy(), Y)
    assert loss == pytest.approx((0.25 + 0 + 1 + 4) / 4)
    assert dZ.dtype == np.float32
    np.testing.assert_allclose(dZ, 2 * (Z - Y) / 4)
    np.testing.assert_array_equal(losses.get("identity_mse").predict(Z), Z)


def test_multilabel_sigmoid_cross_entropy_is_stable_for_huge_logits():
    Z = np.array([[800.0, -800.0, 0.0]])
    Y = np.array([[1.0, 0.0, 1.0]])
    loss, dZ = losses.sigmoid_cross_entropy(Z.copy(), Y)
    assert loss == pytest.approx(np.log(2))
    np.testing.assert_allclose(dZ, [[0.0, 0.0, -0.5]])


def test_count_correct_against_a_per_sample_count():
    """tasks.count_correct for each task against a count written sample by sample."""
    from mbtrain import tasks
    rng = np.random.default_rng(4)
    Z = rng.standard_normal((37, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 37)
    Z[::3, :] = Z[::3, [0]]                                        # ties: the first maximum wins, as np.argmax
    onehot = np.eye(5, dtype=np.float32)[labels]
    want = sum(int(list(z).index(max(z)) == y) for z, y in zip(Z, labels))
    assert tasks.count_correct(Z, onehot, "classification") == want
    soft = rng.uniform(0, 1, (37, 5)).astype(np.float32)          # soft targets: argmax against argmax
    want = sum(int(list(z).index(max(z)) == list(t).index(max(t))) for z, t in zip(Z, soft))
    assert tasks.count_correct(Z, soft, "classification") == want
    binary, y1 = Z[:, :1], (rng.uniform(0, 1, (37, 1)) > 0.5).astype(np.float32)
    assert tasks.count_correct(binary, y1, "classification") == sum(int((z[0] > 0) == (y[0] >= 0.5)) for z, y in zip(binary, y1))
    multi = (rng.uniform(0, 1, (37, 5)) > 0.5).astype(np.float32)
    multi[:20] = (Z[:20] > 0)                                      # some rows exactly right
    want = sum(int(all((z > 0) == (y >= 0.5))) for z, y in zip(Z, multi))
    assert want >= 20 and tasks.count_correct(Z, multi, "multilabel") == want
    assert tasks.count_correct(Z, onehot, "regression") == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_scalar_constants_change_no_bit_and_no_dtype(dtype):
    # activations.ZERO/HALF/ONE are float32 scalars (faster to pass than Python numbers): every
    # activation, derivative and the sigmoid losses give exactly what the same formulas give with
    # Python numbers, in the array's own dtype (a float64 array is not rounded through float32)
    from mbtrain import activations
    rng = np.random.default_rng(7)
    Z = (rng.standard_normal((13, 9)) * 4).astype(dtype)
    Y = (rng.random((13, 9)) < 0.5).astype(dtype)
    a = 0.5 * (1 + np.tanh(Z * 0.5))                                       # Python numbers throughout
    expected = {"sigmoid": (a, (1 - a) * a), "relu": (np.maximum(Z, 0), Z > 0),
                "tanh": (np.tanh(Z), 1 - np.tanh(Z) * np.tanh(Z)),
                "leaky_relu": (np.maximum(Z, Z * 0.01), (Z > 0) * (1 - 0.01) + 0.01)}
    for name, (f, df) in expected.items():
        act = activations.get(name)
        A = act.forward(Z, out=np.empty_like(Z))
        D = act.derivative(Z, A, out=np.empty(Z.shape, bool if act.step_derivative else dtype))
        assert A.dtype == dtype and np.array_equal(A, f.astype(dtype)), name
        assert np.array_equal(D, df.astype(D.dtype)), name
    loss, dZ = losses.sigmoid_quadratic(Z, Y, np.empty_like(Z))
    assert dZ.dtype == dtype and np.array_equal(dZ, (a - Y) * ((1 - a) * a) / 13)
    assert loss == 0.5 * float(np.vdot(a - Y, a - Y)) / 13


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_error_has_no_subnormal_entries_for_a_confident_network(dtype):
    """Logit gaps of 90-110 (float32) or 710-740 (float64) put exp(z - max z) into the subnormal range;
    in dZ those probabilities are exp(-69) (exp(-690)) at least, normal numbers; the loss is still
    the float64 log-sum-exp's."""
    gap = 100.0 if dtype == np.float32 else 725.0
    Z = np.array([[0.0, -gap, -gap - 10, 3.0], [1.0, 2.0, 3.0, 4.0], [-gap + 10, 0.0, 0.5, -gap]], dtype)
    Y = np.eye(4, dtype=dtype)[[3, 0, 1]]
    loss, dZ = losses.softmax_cross_entropy(Z, Y, np.empty_like(Z))
    tiny = np.finfo(dtype).tiny
    assert not ((dZ != 0) & (np.abs(dZ) < tiny)).any()
    floor = np.exp(-69.0 if dtype == np.float32 else -690.0) / 3
    for entry in (dZ[0, 1], dZ[0, 2], dZ[2, 0], dZ[2, 3]):
        assert 0 < entry <= floor * 1.001
    Z64 = Z.astype(np.float64)
    shifted = Z64 - Z64.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-(Y * log_p).sum() / 3, rel=1e-6)
    P = np.exp(log_p)
    np.testing.assert_allclose(dZ, (P - Y) / 3, rtol=1e-6, atol=floor * 1.001)
