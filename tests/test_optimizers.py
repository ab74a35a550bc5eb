"""Each optimizer's update recomputed from its formula, in float64, over several steps."""

import numpy as np
import pytest

from mbtrain import gemm, optim
from mbtrain.config import load_config

# numpy's passes, and BLAS axpy/axpby for the sums where numpy's BLAS has them
LEVEL1 = [False] + ([True] if gemm.level1(np.float64) is not None and gemm.level1(np.float32) is not None else [])


def _params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal(3).astype(dtype)]


def _grads(step, dtype=np.float64):
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal(3).astype(dtype)]


def _run(opt, steps=4):
    for s in range(steps):
        opt.step(_grads(s, opt.params[0].dtype))
    return opt.params


@pytest.mark.parametrize("level1", LEVEL1)
def test_rmsprop_matches_formula(level1):
    lr, rho, eps, wd = 0.01, 0.9, 1e-7, 0.05
    opt = optim.RMSprop(_params(), lr, rho, eps, wd, level1=level1)
    assert (opt.blas is not None) == level1
    got = _run(opt)
    want = _params()
    s = [np.zeros_like(p) for p in want]
    for step in range(4):
        for i, dp in enumerate(_grads(step)):
            g = dp + wd * want[i] if i == 0 else dp           # L2 on the weight, not the bias
            s[i] = rho * s[i] + (1 - rho) * g ** 2
            want[i] = want[i] - lr * g / (np.sqrt(s[i]) + eps)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("level1", LEVEL1)
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_and_adamw_match_formula(decoupled, level1):
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    cls = optim.AdamW if decoupled else optim.Adam
    opt = cls(_params(), lr, b1, b2, eps, wd, level1=level1)
    assert (opt.blas is not None) == level1
    got = _run(opt)
    want = _params()
    m = [np.zeros_like(p) for p in want]
    v = [np.zeros_like(p) for p in want]
    for t in range(1, 5):
        for i, dp in enumerate(_grads(t - 1)):
            g = dp
            if i == 0 and decoupled:
                want[i] = want[i] - lr * wd * want[i]
            elif i == 0:
                g = dp + wd * want[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g ** 2
            m_hat, v_hat = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
            want[i] = want[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_adam_first_step_moves_each_weight_by_about_lr():
    # with bias correction, step 1 is lr * g / (|g| + eps): the sign of g times lr
    p = _params()
    before = [a.copy() for a in p]
    optim.Adam(p, 0.01).step(_grads(0))
    np.testing.assert_allclose(before[0] - p[0], 0.01 * np.sign(_grads(0)[0]), rtol=1e-5)


def test_sgd_nesterov_matches_formula():
    lr, mu, wd = 0.1, 0.9, 0.01
    got = _run(optim.SGD(_params(), lr, mu, True, wd))
    want = _params()
    vel = [np.zeros_like(p) for p in want]
    for step in range(4):
        for i, dp in enumerate(_grads(step)):
            g = dp + wd * want[i] if i == 0 else dp
            vel[i] = mu * vel[i] + g
            want[i] = want[i] - lr * (g + mu * vel[i])
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam", "adamw"])
def test_state_round_trip_continues_exactly(name):
    """Saving the state after 2 steps into a fresh optimizer gives the same steps 3 and 4."""
    cfg = load_config(None, [f"train.optimizer={name}", "train.weight_decay=0.01"]
                      + (["train.momentum=0.9"] if name == "sgd" else []))
    straight = optim.make(cfg.train, _params(dtype=np.float32))
    _run(straight)
    first = optim.make(cfg.train, _params(dtype=np.float32))
    for s in range(2):
        first.step(_grads(s, np.float32))
    saved = {k: np.array(v) for k, v in first.state().items()}
    resumed = optim.make(cfg.train, [p.copy() for p in first.params])
    resumed.load_state(saved)
    for s in range(2, 4):
        resumed.step(_grads(s, np.float32))
    for a, b in zip(straight.params, resumed.params):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


def test_weight_decay_scaling_train_size_is_nielsen_lambda_over_n():
    cfg = load_config(None, ["train.weight_decay=5.0", "train.weight_decay_scaling=train_size"])
    assert optim.effective_weight_decay(cfg.train, 50_000) == pytest.approx(1e-4)
    opt = optim.make(cfg.train, _params(), n_train=50_000)
    # Nielsen's update: w -> (1 - eta lambda / n) w - eta dC0/dw
    p0 = _params()
    g = _grads(0)
    opt.lr = 0.5
    opt.step(g)
    np.testing.assert_allclose(opt.params[0], (1 - 0.5 * 5.0 / 50_000) * p0[0] - 0.5 * g[0], rtol=1e-12)
    np.testing.assert_allclose(opt.params[1], p0[1] - 0.5 * g[1], rtol=1e-12)
    plain = load_config(None, ["train.weight_decay=5.0"])
    assert optim.effective_weight_decay(plain.train, 50_000) == 5.0


@pytest.mark.parametrize("name", ["rmsprop", "adam", "adamw"])
def test_adaptive_steps_into_scratch_give_the_expressions_numbers_bit_for_bit(name):
    # float32 over a packed model of several pieces: the update written as plain numpy
    # expressions (each intermediate its own array), operation for operation, gives the same bits
    from mbtrain.model import MLP, init_params
    params = init_params([300, 200, 10], "he", "zeros", "relu", np.random.default_rng(0), np.float32)
    model = MLP(params, "relu", "softmax_cross_entropy")
    opt = {"rmsprop": optim.RMSprop, "adam": optim.Adam, "adamw": optim.AdamW}[name](
        model.params, 0.01, weight_decay=0.001, level1=False)
    assert len(opt._pieces(model.grads)) >= 2
    want = [p.copy() for p in model.params]
    f = np.float32
    state = [[np.zeros_like(p) for p in want] for _ in range(2)]
    for t in range(1, 4):
        grads = [np.random.default_rng(t * 10 + i).standard_normal(p.shape).astype(f) for i, p in enumerate(want)]
        for g, out in zip(grads, model.grads):
            out[...] = g
        opt.step(model.grads)
        for i, (p, dp) in enumerate(zip(want, grads)):
            if name == "adamw" and i % 2 == 0:
                p *= f(1 - 0.01 * 0.001)
            g = dp + p * f(0.001) if i % 2 == 0 and name != "adamw" else dp   # coupled L2: dW + lambda W
            if name == "rmsprop":
                s = state[0][i]
                lr, rho, eps = f(0.01), f(opt.decay), f(opt.eps)
                s *= rho
                s += (1 - rho) * (g * g)
                p -= lr * g / (np.sqrt(s) + eps)
            else:
                m, v = state[0][i], state[1][i]
                b1, b2, eps, lr = f(opt.beta1), f(opt.beta2), f(opt.eps), f(0.01)
                c1, c2 = f(1 - opt.beta1 ** t), f(1 - opt.beta2 ** t)
                m *= b1
                m += (1 - b1) * g
                v *= b2
                v += (1 - b2) * (g * g)
                p -= lr * (m / c1) / (np.sqrt(v / c2) + eps)
        for got, exp in zip(model.params, want):
            assert got.dtype == np.float32 and np.array_equal(got, exp), (name, t)


@pytest.mark.skipif(len(LEVEL1) < 2, reason="numpy's BLAS axpy/axpby not found")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["rmsprop", "adam", "adamw"])
def test_adaptive_steps_through_blas_equal_numpys_up_to_rounding(monkeypatch, name, dtype):
    """Over a packed model with a column-major W0, in pieces of 1,000 entries (no array's size a
    multiple), with weight decay: the BLAS step's parameters and state against numpy's."""
    from mbtrain.model import MLP, init_params
    monkeypatch.setattr(optim._ArrayPieces, "PIECE_BYTES", 1000 * np.dtype(dtype).itemsize)
    models = [MLP(init_params([300, 200, 10], "he", "zeros", "relu", np.random.default_rng(0), dtype),
                  "relu", "softmax_cross_entropy") for _ in range(2)]
    cls = {"rmsprop": optim.RMSprop, "adam": optim.Adam, "adamw": optim.AdamW}[name]
    opts = [cls(m.params, 0.01, weight_decay=0.01, level1=level1) for m, level1 in zip(models, (False, True))]
    for t in range(5):
        grads = [np.random.default_rng(t * 10 + i).standard_normal(p.shape).astype(dtype)
                 for i, p in enumerate(models[0].params)]
        for model, opt in zip(models, opts):
            for g, out in zip(grads, model.grads):
                out[...] = g
            opt.step(model.grads)
        for g, out in zip(grads, models[1].grads):               # the gradients are read, not written
            np.testing.assert_array_equal(out, g)
    assert len(opts[1]._array_pieces(models[1].grads)) == sum(-(-p.size // 1000) for p in models[1].params)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(opts[0].params, opts[1].params):
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol)
    for key, a in opts[0].state().items():
        np.testing.assert_allclose(opts[1].state()[key], a, rtol=tol, atol=tol, err_msg=key)


def _with_tiny_state(name, dtype):
    """An optimizer over two arrays whose state holds entries below FLUSH_BELOW (subnormal ones too)."""
    params = [np.ones((30, 20), dtype), np.ones(30, dtype)]
    make = {"sgd": lambda p: optim.SGD(p, 0.1, momentum=0.9), "rmsprop": lambda p: optim.RMSprop(p, 0.1),
            "adam": lambda p: optim.Adam(p, 0.1)}[name]
    opt = make(params)
    below = optim.FLUSH_BELOW[np.dtype(dtype)]
    rng = np.random.default_rng(0)
    for arrays in {"sgd": lambda: [opt.velocity], "rmsprop": lambda: [opt.square_avg],
                   "adam": lambda: [opt.m, opt.v]}[name]():
        for a in arrays:
            values = rng.choice([below * 0.5, np.finfo(dtype).tiny / 8, 1e-3, below * 4], size=a.shape)
            a[...] = values.astype(dtype)
    return opt


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam"])
def test_state_below_flush_below_is_zeroed_every_flush_every_steps_and_nothing_else_changes(name, dtype):
    opt, twin = _with_tiny_state(name, dtype), _with_tiny_state(name, dtype)
    twin._flush = lambda steps: None                              # the same steps, never flushed
    zero = [np.zeros(p.shape, dtype) for p in opt.params]          # state decays: no entry grows
    state = lambda o: {k: np.array(v) for k, v in o.state().items() if k != "t"}
    below = optim.FLUSH_BELOW[np.dtype(dtype)]
    for s in range(1, 2 * optim.FLUSH_EVERY + 1):
        opt.step(zero)
        twin.step(zero)
        got, want = state(opt), state(twin)
        tiny = {k: np.abs(w) < below for k, w in want.items()}
        if s < optim.FLUSH_EVERY:                                  # before the first flush: the same
            assert all(np.array_equal(got[k], want[k]) for k in got) and any(t.any() for t in tiny.values())
        elif s == optim.FLUSH_EVERY:
            for k in got:
                assert (got[k][tiny[k]] == 0).all() and tiny[k].any(), k
                np.testing.assert_array_equal(got[k][~tiny[k]], want[k][~tiny[k]])
        for a, b in zip(opt.params, twin.params):                  # no weight moved differently
            np.testing.assert_array_equal(a, b)
    assert opt.steps == 2 * optim.FLUSH_EVERY


def test_a_resumed_fit_flushes_at_the_global_steps_of_an_uninterrupted_one(tmp_path, monkeypatch):
    """With a flush threshold that matters (1e-3) every 5 steps, 13 steps an epoch: two epochs and a
    resumed third end bit-identical to three straight epochs only if the count follows the global step."""
    from conftest import make_blobs
    from mbtrain import checkpoint, train
    monkeypatch.setattr(optim, "FLUSH_EVERY", 5)
    monkeypatch.setitem(optim.FLUSH_BELOW, np.dtype(np.float32), 1e-3)
    x, y = make_blobs(200, 8, 3, seed=5)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    sets = [f"data.train={tmp_path / 'train.npz'}", "data.validation=0", "model.layers=[8, 12, 3]",
            "train.batch_size=16", "train.lr=0.3", "train.momentum=0.9", "train.schedule=constant", "seed=3"]
    straight, first = tmp_path / "straight", tmp_path / "first"
    for run in (straight, first):
        (run / "checkpoints").mkdir(parents=True)
    train.fit(load_config(None, sets + ["train.epochs=3"]), str(straight), quiet=True)
    train.fit(load_config(None, sets + ["train.epochs=2"]), str(first), quiet=True)
    last = checkpoint.load(str(first / "checkpoints" / "last.npz"))
    train.fit(load_config(None, sets + ["train.epochs=3"]), str(first), resume=last, quiet=True)
    a = checkpoint.load(str(straight / "checkpoints" / "last.npz"))
    b = checkpoint.load(str(first / "checkpoints" / "last.npz"))
    for p, q in zip(a.params, b.params):
        np.testing.assert_array_equal(p, q)
