"""The training step (mbtrain.step): plain SGD fused into the weight-gradient products (mbtrain.gemm)
against the general path, the guard's vouching, and the fallback when numpy's BLAS is not usable."""

from __future__ import annotations

import numpy as np
import pytest

from mbtrain import flat, gemm, guard, optim, step
from mbtrain.errors import Diverged, MbtrainError
from mbtrain.model import MLP, init_params, weight_order

needs_gemm = pytest.mark.skipif(not gemm.available(np.float32), reason="numpy's BLAS gemm not found")


@pytest.fixture(autouse=True)
def fuse_small_networks(monkeypatch):
    """These tests' networks are tiny; fuse them anyway (auto fuses from FUSE_MIN_WEIGHTS weights a layer),
    and let the general path vouch (from VOUCH_MIN_PARAMS parameters)."""
    monkeypatch.setattr(step, "FUSE_MIN_WEIGHTS", 0)
    monkeypatch.setattr(step, "VOUCH_MIN_PARAMS", 0)


@needs_gemm
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K,m,n", [(1, 3, 4), (10, 30, 784), (64, 10, 100), (7, 1, 1)])
@pytest.mark.parametrize("order", ["C", "F"])                  # a row- or column-major C (model.weight_order)
def test_update_equals_numpy(dtype, K, m, n, order):
    rng = np.random.default_rng(K * m + n)
    C = np.asarray(rng.standard_normal((m, n)).astype(dtype), order=order)
    A, B = rng.standard_normal((K, m)).astype(dtype), rng.standard_normal((K, n)).astype(dtype)
    want = 0.75 * C.astype(np.float64) - 0.1 * (A.T.astype(np.float64) @ B.astype(np.float64))
    gemm.update(C, A, B, alpha=-0.1, beta=0.75)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(C, want, rtol=tol, atol=tol * np.abs(want).max())


@needs_gemm
@pytest.mark.parametrize("orders", ["FF", "FC", "CF"])               # A's and B's memory order
@pytest.mark.parametrize("c_order", ["C", "F"])
def test_update_and_add_product_take_column_major_operands(orders, c_order):
    """A column-major operand is read as its row-major transpose with the flag flipped."""
    rng = np.random.default_rng(7)
    K, m, n = 6, 4, 5
    A = np.asarray(rng.standard_normal((K, m)).astype(np.float32), order=orders[0])
    B = np.asarray(rng.standard_normal((K, n)).astype(np.float32), order=orders[1])
    C = np.asarray(rng.standard_normal((m, n)).astype(np.float32), order=c_order)
    want = 0.5 * C.astype(np.float64) - 2.0 * (A.T.astype(np.float64) @ B.astype(np.float64))
    gemm.update(C, A, B, alpha=-2.0, beta=0.5)
    np.testing.assert_allclose(C, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    W = np.asarray(rng.standard_normal((m, n)).astype(np.float32), order=orders[1])
    X = np.asarray(rng.standard_normal((K, n)).astype(np.float32), order=orders[0])
    Z = np.asarray(rng.standard_normal((K, m)).astype(np.float32), order=c_order)
    want = Z.astype(np.float64) + X.astype(np.float64) @ W.T.astype(np.float64)
    gemm.add_product(Z, X, W)
    np.testing.assert_allclose(Z, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@needs_gemm
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("orders", ["CCC", "FCC", "CFC", "CCF", "FFF"])   # C's, A's and B's memory order
def test_a_prepared_product_makes_what_the_one_off_call_makes(dtype, orders):
    """gemm.Product: the same gemm call as update() and add_product(), bit for bit, over calls that
    change alpha and beta and swap the batch operand for another array of the same layout."""
    rng = np.random.default_rng(11)
    K, m, n = 9, 7, 5
    arr = lambda shape, order: np.asarray(rng.standard_normal(shape).astype(dtype), order=order)
    C, A = arr((m, n), orders[0]), arr((K, m), orders[1])
    batches = [arr((K, n), orders[2]) for _ in range(3)]
    planned, one_off = C.copy(order="A"), C.copy(order="A")
    update = gemm.Product("update", planned, A, True, batches[0], False)
    for B, alpha, beta in [(batches[0], -0.1, 1.0), (batches[1], -0.1, 1.0), (batches[2], 0.3, 0.5), (batches[0], 0.3, 0.5)]:
        update(alpha, beta, B=B)
        gemm.update(one_off, A, B, alpha=alpha, beta=beta)
        assert np.array_equal(planned, one_off)
    want = C.astype(np.float64)
    for B, alpha, beta in [(batches[0], -0.1, 1.0), (batches[1], -0.1, 1.0), (batches[2], 0.3, 0.5), (batches[0], 0.3, 0.5)]:
        want = beta * want + alpha * (A.T.astype(np.float64) @ B.astype(np.float64))   # an independent reference
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(planned, want, rtol=tol, atol=tol * np.abs(want).max())
    W, Z = arr((m, n), orders[2]), arr((K, m), orders[0])
    planned, one_off = Z.copy(order="A"), Z.copy(order="A")
    forward = gemm.Product("forward", planned, batches[0], False, W, True)
    for X in batches:
        forward(1.0, 1.0, A=X)
        gemm.add_product(one_off, X, W)
        assert np.array_equal(planned, one_off)


@needs_gemm
def test_a_prepared_product_checks_a_batch_of_another_layout_again():
    """A batch of another memory order is read right (the call is made again); one of another shape or
    dtype is refused as update() refuses it; an empty product keeps numpy's meaning (C = beta C)."""
    rng = np.random.default_rng(12)
    K, m, n = 6, 4, 3
    C, A, B = (rng.standard_normal(s).astype(np.float32) for s in ((m, n), (K, m), (K, n)))
    want = C.astype(np.float64)
    update = gemm.Product("update", C, A, True, B, False)
    for batch in (B, np.asfortranarray(B), B.copy()):
        update(-0.5, 1.0, B=batch)
        want = want - 0.5 * (A.T.astype(np.float64) @ batch.astype(np.float64))
        np.testing.assert_allclose(C, want, rtol=1e-5, atol=1e-5)
    strided = np.ones((K, 2 * n), np.float32)[:, ::2]
    for before in (B, np.asfortranarray(B)):
        for bad in (np.ones((K + 1, n), np.float32), B.astype(np.float64), strided):
            update(-0.5, 1.0, B=before)
            with pytest.raises(ValueError, match="gemm.update"):
                update(-0.5, 1.0, B=bad)
        update(-0.5, 1.0)                                       # refused: the plan still reads `before`
        want = want - 0.5 * 4 * (A.T.astype(np.float64) @ B.astype(np.float64))
    np.testing.assert_allclose(C, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    half = [a.astype(np.float16) for a in (C, A, B)]
    with pytest.raises(ValueError, match="no BLAS gemm found for float16"):
        gemm.Product("update", half[0], half[1], True, half[2], False)
    C0 = np.ones((m, n), np.float32)
    empty = gemm.Product("update", C0, np.ones((0, m), np.float32), True, np.ones((0, n), np.float32), False)
    empty(-1.0, 0.5)
    assert np.array_equal(C0, np.full((m, n), 0.5, np.float32))


@needs_gemm
def test_update_refuses_arrays_it_cannot_pass_to_blas():
    C, A, B = np.zeros((3, 4), np.float32), np.ones((5, 3), np.float32), np.ones((5, 4), np.float32)
    with pytest.raises(ValueError, match="contiguous"):
        gemm.update(np.zeros((3, 8), np.float32)[:, ::2], A, B, -1.0)     # strided C
    with pytest.raises(ValueError, match="contiguous"):
        gemm.update(C, np.ones((5, 6), np.float32)[:, ::2], B, -1.0)      # strided A
    with pytest.raises(ValueError, match="shapes"):
        gemm.update(C, A, np.ones((5, 5), np.float32), -1.0)
    with pytest.raises(ValueError, match="shapes"):
        gemm.update(C, A, B.astype(np.float64), -1.0)


@needs_gemm
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K,n,m", [(1, 3, 4), (64, 784, 100), (7, 1, 1), (0, 3, 4), (5, 3, 0)])
@pytest.mark.parametrize("order", ["C", "F"])                  # a row- or column-major W (model.weight_order)
def test_add_product_equals_numpy(dtype, K, n, m, order):
    rng = np.random.default_rng(K * m + n)
    A = rng.standard_normal((K, n)).astype(dtype)
    W = np.asarray(rng.standard_normal((m, n)).astype(dtype), order=order)
    Z = rng.standard_normal((K, m)).astype(dtype)
    want = Z.astype(np.float64) + A.astype(np.float64) @ W.T.astype(np.float64)
    gemm.add_product(Z, A, W)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(Z, want, rtol=tol, atol=tol * max(np.abs(want).max(initial=0), 1))


@needs_gemm
def test_add_product_refuses_arrays_it_cannot_pass_to_blas():
    Z, A, W = np.zeros((5, 3), np.float32), np.ones((5, 4), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="contiguous"):
        gemm.add_product(np.zeros((5, 6), np.float32)[:, ::2], A, W)    # strided Z
    with pytest.raises(ValueError, match="contiguous"):
        gemm.add_product(Z, np.ones((5, 8), np.float32)[:, ::2], W)    # strided A
    with pytest.raises(ValueError, match="shapes"):
        gemm.add_product(Z, A, np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match="shapes"):
        gemm.add_product(Z, A, W.astype(np.float64))


@needs_gemm
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_layers_take_their_bias_in_the_forward_product(dtype, monkeypatch):
    """Row-major layers of BIAS_IN_PRODUCT_WIDTH neurons and more: Z = b, then Z += A_prev @ W.T
    through BLAS; Z matches a float64 reference, narrower layers keep matmul and +=, and a batch
    BLAS cannot take (column-major) takes numpy's path to the same numbers."""
    from mbtrain import model as model_module
    rng = np.random.default_rng(5)
    layers = [20, 600, 12, model_module.BIAS_IN_PRODUCT_WIDTH]    # W0 (600, 20) row-major (weight_order)
    m = MLP(init_params(layers, "he", "normal", "tanh", rng, dtype), "tanh", "softmax_cross_entropy")
    calls = []
    real = gemm.Product.__call__
    monkeypatch.setattr(gemm.Product, "__call__", lambda plan, *a, **k: (
        calls.append(plan.C.shape[1]) if plan.name == "forward" else None) or real(plan, *a, **k))
    X = rng.standard_normal((9, 20)).astype(dtype)
    m.forward(X)
    assert calls == [layers[1], layers[3]]
    A = X.astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for l, (W, b) in enumerate(zip(m.weights, m.biases)):
        Z = A @ W.T.astype(np.float64) + b
        np.testing.assert_allclose(m.Z[l], Z, rtol=tol, atol=tol * np.abs(Z).max())
        A = np.tanh(Z)
    wide = [Z.copy() for Z in m.Z]
    calls.clear()
    m.forward(np.asfortranarray(X))                               # a column-major batch
    assert calls == [layers[3]]                                   # the first layer fell back to numpy
    np.testing.assert_allclose(m.Z[-1], wide[-1], rtol=tol, atol=tol * np.abs(wide[-1]).max())
    calls.clear()
    narrow = MLP(init_params([20, 256, 10], "he", "normal", "tanh", rng, dtype), "tanh", "softmax_cross_entropy")
    narrow.forward(X)
    assert calls == []                                            # a column-major W0 (measured slower)


def _model(dtype, seed=0, layers=(6, 9, 7, 3), activation="relu"):
    rng = np.random.default_rng(seed)
    return MLP(init_params(list(layers), "he", "normal", activation, rng, dtype), activation,
               "softmax_cross_entropy")


def _batches(dtype, n=5, K=8):
    rng = np.random.default_rng(42)
    return [(rng.standard_normal((K, 6)).astype(dtype), np.eye(3, dtype=dtype)[rng.integers(0, 3, K)])
            for _ in range(n)]


def assert_same_as_the_general_path(train_step, model, ref, dtype):
    """train_step over some batches leaves model's weights bit-identical to forming dW and SGD on ref."""
    opt = optim.SGD(ref.params, lr=0.3)
    for X, Y in _batches(dtype):
        train_step(X, Y)
        ref.forward(X)
        ref.loss_and_backward(Y)
        opt.step(ref.grads)
    for a, b in zip(model.params, ref.params):
        assert np.array_equal(a, b)


@needs_gemm
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_dropout", [False, True])
@pytest.mark.parametrize("layers", [(6, 9, 7, 3), (6, 64, 7, 3)])     # the second: W0 column-major
def test_fused_sgd_matches_the_general_path(dtype, with_dropout, layers):
    fused_model, plain_model = _model(dtype, layers=layers), _model(dtype, layers=layers)
    assert flat.order(fused_model.weights[0]) == weight_order(0, layers[1])
    fused = step.TrainStep(fused_model, optim.SGD(fused_model.params, lr=0.3))
    general = step.TrainStep(plain_model, optim.SGD(plain_model.params, lr=0.3))
    general.fused = False
    assert fused.fused
    rng = np.random.default_rng(1)
    for X, Y in _batches(dtype):
        masks = [(rng.random((len(X), m)) > 0.3).astype(dtype) / dtype(0.7) for m in layers[1:-1]] \
            if with_dropout else None
        assert fused(X, Y, masks) == pytest.approx(general(X, Y, masks), rel=1e-5)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    for a, b in zip(fused_model.params, plain_model.params):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@needs_gemm
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_fused_bias_step_is_lr_times_the_column_sums_of_the_errors(dtype):
    """b = b - lr 1^T dZ by one gemm call per layer: against float64 column sums of the step's own
    errors; the bias gradients in model.grads are not formed (the general path's are)."""
    model = _model(dtype)
    s = step.TrainStep(model, optim.SGD(model.params, lr=0.3))
    assert s.fused
    for g in model.grads[1::2]:
        g[...] = 7                                       # a sentinel no fused step writes over
    for X, Y in _batches(dtype, 3):
        before = [b.astype(np.float64) for b in model.biases]
        s(X, Y)
        tol = 1e-6 if dtype == np.float32 else 1e-14
        for b, b0, dZ in zip(model.biases, before, model.dZ):
            np.testing.assert_allclose(b, b0 - 0.3 * dZ.astype(np.float64).sum(axis=0), rtol=tol, atol=tol)
    for g in model.grads[1::2]:
        assert (g == 7).all()


@needs_gemm
def test_fused_sgd_is_deterministic():
    runs = []
    for _ in range(2):
        model = _model(np.float32)
        s = step.TrainStep(model, optim.SGD(model.params, lr=0.3))
        for X, Y in _batches(np.float32):
            s(X, Y)
        runs.append([p.copy() for p in model.params])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("kw,clip", [(dict(momentum=0.9), 0.0), (dict(weight_decay=1e-3), 0.0), ({}, 1.0)])
def test_only_plain_sgd_without_clipping_fuses(kw, clip):
    model = _model(np.float32)
    assert not step.TrainStep(model, optim.SGD(model.params, 0.1, **kw), clip).fused
    assert not step.TrainStep(model, optim.Adam(model.params, 0.1)).fused


def test_auto_fuses_large_layers_only(monkeypatch):
    monkeypatch.setattr(step, "FUSE_MIN_WEIGHTS", 1 << 15)
    small, large = _model(np.float32), _model(np.float32, layers=(784, 100, 10))
    assert not step.TrainStep(small, optim.SGD(small.params, 0.1)).fused
    assert step.TrainStep(large, optim.SGD(large.params, 0.1)).fused == gemm.available(np.float32)
    assert not step.TrainStep(large, optim.SGD(large.params, 0.1), fused_update="off").fused
    if gemm.available(np.float32):
        assert step.TrainStep(small, optim.SGD(small.params, 0.1), fused_update="on").fused


def test_without_blas_gemm_the_step_takes_the_general_path(monkeypatch):
    monkeypatch.setattr(gemm, "available", lambda dtype: False)
    model, ref = _model(np.float64), _model(np.float64)
    s = step.TrainStep(model, optim.SGD(model.params, lr=0.3))
    assert not s.fused
    with pytest.raises(MbtrainError, match="train.fused_update = on"):
        step.TrainStep(model, optim.SGD(model.params, lr=0.3), fused_update="on")
    assert_same_as_the_general_path(s, model, ref, np.float64)


@needs_gemm
def test_guard_stops_a_fused_step_before_any_weight_changes():
    model = _model(np.float32)
    s = step.TrainStep(model, optim.SGD(model.params, lr=0.3))
    X, Y = _batches(np.float32, 1)[0]
    before = [p.copy() for p in model.params]
    X[2, 1] = np.nan                                 # a non-finite input: the loss is nan
    with pytest.raises(Diverged, match="loss is nan"):
        s(X, Y)
    for a, b in zip(model.params, before):
        assert np.array_equal(a, b)


def test_guard_vouches_only_for_finite_bounded_gradients():
    # every dW entry is at most ||dZ|| ||A_prev||: 1e20 * 1e20 * 4 is beyond float32's 3.4e38
    dZ, A = [np.full((4, 3), 1e-3, np.float32)], [np.ones((4, 6), np.float32)]
    assert guard.vouch_for_fused_sgd(1.0, dZ, A)
    assert not guard.vouch_for_fused_sgd(1.0, [np.full((4, 3), 1e20, np.float32)], [np.full((4, 6), 1e20, np.float32)])
    dZ[0][1, 2] = np.inf
    assert not guard.vouch_for_fused_sgd(1.0, dZ, A)
    dZ[0][1, 2] = np.nan
    assert not guard.vouch_for_fused_sgd(1.0, dZ, A)
    with pytest.raises(Diverged, match="loss is inf"):
        guard.vouch_for_fused_sgd(float("inf"), dZ, A)


@needs_gemm
def test_when_the_guard_cannot_vouch_the_step_forms_the_gradients(monkeypatch):
    asked = []
    monkeypatch.setattr(guard, "vouch_from_squares", lambda *args: asked.append(args) and False)
    model, ref = _model(np.float32), _model(np.float32)
    s = step.TrainStep(model, optim.SGD(model.params, lr=0.3))
    assert s.fused
    assert_same_as_the_general_path(s, model, ref, np.float32)
    assert asked                                       # the step asked ...
    for g, r in zip(model.grads, ref.grads):           # ... and formed every gradient, dW included (the
        assert np.array_equal(g, r)                    # fused path never writes dW: on these batches its
                                                       # weights alone are bit-identical to the general path's)


@needs_gemm
@pytest.mark.parametrize("with_dropout", [False, True])
def test_the_squares_the_model_notes_for_the_guard_are_those_of_its_arrays(monkeypatch, with_dropout):
    """A fused step's model notes ||A_prev||^2 of each hidden layer's input (dropped out, when masks
    are given) and ||dZ||^2 of each error as it writes them; they equal fresh dot products of the
    arrays the update then reads, and the step's verdict is the voucher's on those arrays."""
    from mbtrain import dropout
    model = _model(np.float32)
    s = step.TrainStep(model, optim.SGD(model.params, lr=0.3))
    for i, (X, Y) in enumerate(_batches(np.float32)):
        masks = dropout.masks(7, 0, i, len(X), model.layers[1:-1], 0.5, model.dtype) if with_dropout else None
        model.forward(X, masks)
        loss = model.loss_and_errors(Y)
        inputs = model.layer_inputs()
        assert (inputs[1] is model.A_dropped[0]) == with_dropout
        assert model.input_squares[1:] == [float(np.vdot(A, A)) for A in inputs[1:]]
        assert model.error_squares == [float(np.vdot(dZ, dZ)) for dZ in model.dZ]
        s(X, Y, masks)                                 # the step notes the same squares again
        assert model.error_squares == [float(np.vdot(dZ, dZ)) for dZ in model.dZ]
    unfused = _model(np.float32)
    step.TrainStep(unfused, optim.SGD(unfused.params, lr=0.3, momentum=0.9))
    assert unfused.squares                             # the general path vouches from them too ...
    clipped = _model(np.float32)
    step.TrainStep(clipped, optim.SGD(clipped.params, lr=0.3, momentum=0.9), clip_norm=1.0)
    assert not clipped.squares                         # ... but clipping needs the gradients' norm
    monkeypatch.setattr(step, "VOUCH_MIN_PARAMS", sum(p.size for p in unfused.params) + 1)
    step.TrainStep(unfused, optim.SGD(unfused.params, lr=0.3, momentum=0.9))
    assert not unfused.squares                         # a pass over this few gradients costs less


@needs_gemm
def test_update_keeps_no_array_alive_and_follows_new_arrays_at_old_ids():
    import gc
    import weakref
    for _ in range(300):                               # more arrays than the address cache holds
        C = np.zeros((2, 3), np.float32)
        A, B = np.ones((4, 2), np.float32), np.ones((4, 3), np.float32)
        gemm.update(C, A, B, alpha=1.0, beta=0.0)
        assert (C == 4).all()                          # written where this C lives, not an old one
    probe = np.zeros((2, 3), np.float32)
    ref = weakref.ref(probe)
    gemm.update(probe, A, B, alpha=1.0, beta=0.0)
    del probe
    gc.collect()
    assert ref() is None


@needs_gemm
def test_an_input_bound_spares_the_pass_over_the_batch_and_changes_no_weight(monkeypatch):
    """TrainStep(input_bound=...) bounds ||X|| from it: the guard never reads X, the weights are
    the same as when it does."""
    runs = []
    for bound in (None, 4.5):
        model = _model(np.float32)
        s = step.TrainStep(model, optim.SGD(model.params, lr=0.3), input_bound=bound)
        read = []
        vdot = np.vdot
        monkeypatch.setattr(guard.np, "vdot", lambda a, b: (read.append(a.shape), vdot(a, b))[1])
        for X, Y in _batches(np.float32):
            assert np.abs(X).max() <= 4.5
            s(X, Y)
        monkeypatch.setattr(guard.np, "vdot", vdot)
        assert ((8, 6) in read) == (bound is None)           # X is (8, 6); every other input is read
        assert (8, 9) in read and (8, 7) in read
        runs.append([p.copy() for p in model.params])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


@pytest.mark.skipif(not gemm.axpy_available(np.float32), reason="numpy's BLAS axpy not found")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,order", [((1000,), "C"), ((30, 17), "C"), ((30, 17), "F"), ((0,), "C")])
def test_axpy_equals_numpy(dtype, shape, order):
    rng = np.random.default_rng(2)
    x = np.asarray(rng.standard_normal(shape), dtype, order=order)
    y = np.asarray(rng.standard_normal(shape), dtype, order=order)
    expected = y + dtype(-0.37) * x
    gemm.axpy(y, x, -0.37)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)


@pytest.mark.skipif(not gemm.axpy_available(np.float32), reason="numpy's BLAS axpy not found")
def test_axpy_refuses_arrays_it_cannot_pass_to_blas():
    y, x = np.zeros((4, 6), np.float32), np.ones((4, 6), np.float32)
    for bad_y, bad_x in [(y, x[:, :5]), (y, x.astype(np.float64)), (y[:, ::2], x[:, ::2]),
                         (y, np.asfortranarray(x)), (np.zeros(24, np.float32), x)]:
        with pytest.raises(ValueError):
            gemm.axpy(bad_y, bad_x, 1.0)
    y.flags.writeable = False
    with pytest.raises(ValueError):
        gemm.axpy(y, x, 1.0)


@pytest.mark.skipif(not gemm.axpy_available(np.float32), reason="numpy's BLAS axpy not found")
def test_axpy_plan_updates_every_pair_and_checks_them_once():
    rng = np.random.default_rng(4)
    ys = [rng.standard_normal(n).astype(np.float32) for n in (5, 0, 300)]
    xs = [rng.standard_normal(n).astype(np.float32) for n in (5, 0, 300)]
    expected = [y + np.float32(0.25) * x for y, x in zip(ys, xs)]
    plan = gemm.AxpyPlan(list(zip(ys, xs)))
    plan(0.25)
    for y, e in zip(ys, expected):
        np.testing.assert_allclose(y, e, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError):
        gemm.AxpyPlan([(ys[0], xs[2])])


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_the_general_path_checks_the_gradients_only_where_the_errors_cannot_vouch_for_them(monkeypatch, name):
    """Momentum SGD or Adam, no clipping: the errors and inputs vouch for ordinary batches (no pass over
    the gradients, the same weights as checking them); a batch whose ||X||^2 overflows float32 is
    checked the usual way and trains; one that makes the loss non-finite stops with nothing changed."""
    checks = []
    real = guard.check_step
    monkeypatch.setattr(step.guard, "check_step", lambda *a, **k: (checks.append(1), real(*a, **k))[1])
    make = lambda m: (optim.SGD(m.params, lr=0.3, momentum=0.9, nesterov=True, weight_decay=1e-3) if name == "sgd"
                      else optim.Adam(m.params, lr=1e-3, weight_decay=1e-3))
    model, ref = _model(np.float32), _model(np.float32)
    vouching, checking = step.TrainStep(model, make(model)), step.TrainStep(ref, make(ref))
    checking.vouches = ref.squares = False                       # always the pass over the gradients
    batches = _batches(np.float32)
    for X, Y in batches:
        vouching(X, Y)
    assert checks == []
    for X, Y in batches:
        checking(X, Y)
    assert len(checks) == len(batches)
    for a, b in zip(model.params, ref.params):
        np.testing.assert_array_equal(a, b)
    checks.clear()
    X, Y = batches[0]
    big = X * np.float32(1e19)                                    # ||X||^2 ~ 1e38 K n: inf in float32
    assert not np.isfinite(np.vdot(big, big))
    before = [p.copy() for p in model.params]
    assert np.isfinite(vouching(big, Y))
    assert checks == [1] and all(np.isfinite(p).all() for p in model.params)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.params))   # the step was taken
    before = [p.copy() for p in model.params]
    with pytest.raises(Diverged):
        vouching(np.full_like(X, np.nan), Y)
    for a, b in zip(before, model.params):
        np.testing.assert_array_equal(a, b)
