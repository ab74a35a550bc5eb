"""Dropout masks and gradients, the monitored metric (best, early stopping, plateau), and exact resume."""

import os

import numpy as np
import pytest

from mbtrain import checkpoint, dropout, monitor
from mbtrain.config import load_config
from mbtrain.model import MLP, init_params
from mbtrain.train import fit


def test_masks_are_seeded_scaled_and_about_rate():
    a = dropout.masks(7, 2, 5, 200, [50, 30], 0.25, np.float32)
    b = dropout.masks(7, 2, 5, 200, [50, 30], 0.25, np.float32)
    c = dropout.masks(7, 2, 6, 200, [50, 30], 0.25, np.float32)
    assert [m.shape for m in a] == [(200, 50), (200, 30)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    values = np.unique(np.concatenate([m.ravel() for m in a]))
    np.testing.assert_allclose(values, [0.0, 1 / 0.75], rtol=1e-7)
    dropped = np.mean(np.concatenate([m.ravel() for m in a]) == 0)
    assert 0.22 < dropped < 0.28
    f64 = dropout.masks(7, 2, 5, 200, [50, 30], 0.25, np.float64)
    assert f64[0].dtype == np.float64 and np.array_equal(f64[0] == 0, a[0] == 0)


def _masks_from_floats(seed, epoch, step, K, hidden, rate, dtype):
    """The masks as numpy draws them: float32 uniforms against 1 - rate, layer after layer."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(dropout.DROPOUT_STREAM, epoch, step)))
    out = []
    for m in hidden:
        mask = (rng.random((K, m), dtype=np.float32) < 1.0 - rate).astype(dtype)
        mask *= np.dtype(dtype).type(1.0 / (1.0 - rate))
        out.append(mask)
    return out


@pytest.mark.parametrize("rate", [1e-9, 0.01, 0.2, 0.25, 0.3, 0.5, 0.7, 0.9, 0.999])
@pytest.mark.parametrize("K,hidden", [(128, [512, 512]), (7, [5, 3, 9]), (1, [1]), (3, [1, 2]), (129, [129, 131])])
def test_masks_are_numpys_float32_draws_bit_for_bit(rate, K, hidden):
    # odd layer sizes leave half of a 64-bit output to the next layer, as numpy's draws do
    for dtype in (np.float32, np.float64):
        for step in range(3):
            ours = dropout.masks(11, 1, step, K, hidden, rate, dtype)
            ref = _masks_from_floats(11, 1, step, K, hidden, rate, dtype)
            assert [m.dtype for m in ours] == [np.dtype(dtype)] * len(hidden)
            assert all(np.array_equal(a, b) for a, b in zip(ours, ref)), (rate, K, hidden, dtype, step)


@pytest.mark.parametrize("chunk", [7, 8, 1 << 14])
def test_masks_in_chunks_and_into_reused_buffers_are_the_same(monkeypatch, chunk):
    # an odd chunk leaves a half-word in the middle of a layer too
    monkeypatch.setattr(dropout, "CHUNK_WORDS", chunk)
    run = dropout.Masks(5, [33, 17], 0.3, np.float32)
    first = run(0, 0, 20)
    assert all(np.array_equal(a, b) for a, b in zip(first, _masks_from_floats(5, 0, 0, 20, [33, 17], 0.3, np.float32)))
    again = run(2, 7, 20)                                  # the same buffers, refilled
    assert [id(a) for a in again] == [id(a) for a in first]
    assert all(np.array_equal(a, b) for a, b in zip(again, _masks_from_floats(5, 2, 7, 20, [33, 17], 0.3, np.float32)))
    last = run(2, 8, 3)                                    # another batch size: its own buffers
    assert [a.shape for a in last] == [(3, 33), (3, 17)] and all(a is not b for a, b in zip(last, first))
    assert all(np.array_equal(a, b) for a, b in zip(last, _masks_from_floats(5, 2, 8, 3, [33, 17], 0.3, np.float32)))


def test_word_threshold_is_exact_at_its_edge():
    for keep in (np.float32(0.8), np.float32(0.3), np.float32(1 - 2 ** -24), np.float32(2 ** -24)):
        t = dropout._words_below(keep)
        for w in (t - 257, t - 256, t - 1, t, t + 1, t + 255, t + 256):
            if 0 <= w < 1 << 32:
                assert (np.float32(w >> 8) * np.float32(2 ** -24) < keep) == (w < t), (keep, w)


def _net(activation="tanh"):
    params = init_params([5, 7, 6, 3], "xavier", "normal", activation, np.random.default_rng(0), np.float64)
    return MLP(params, activation, "softmax_cross_entropy")


def _loss_with_mask(net, X, Y, masks):
    net.forward(X, masks)
    return net.out.loss_and_delta(net.Z[-1].copy(), Y)[0]


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_backward_with_fixed_mask_matches_finite_differences(activation):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((4, 5))
    Y = np.eye(3)[rng.integers(0, 3, 4)]
    masks = dropout.masks(3, 0, 0, 4, [7, 6], 0.5, np.float64)
    net = _net(activation)
    net.forward(X, masks)
    net.loss_and_backward(Y)
    analytic = [g.copy() for g in net.grads]
    h = 1e-6
    for p, g in zip(net.params, analytic):
        numeric = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + h
            plus = _loss_with_mask(net, X, Y, masks)
            p[i] = old - h
            minus = _loss_with_mask(net, X, Y, masks)
            p[i] = old
            numeric[i] = (plus - minus) / (2 * h)
        np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-8)


def test_mask_zeroes_units_and_eval_ignores_masks():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((4, 5))
    net = _net()
    masks = [np.zeros((4, 7)), np.ones((4, 6))]
    # with layer 1 fully dropped, the output depends on the biases only: the same for every sample
    Z = net.forward(X, masks).copy()
    np.testing.assert_allclose(Z, np.broadcast_to(Z[0], Z.shape))
    np.testing.assert_array_equal(net.forward(X), net.logits(X))


def _row(epoch, val_loss):
    return {"epoch": epoch, "train_loss": 1.0, "train_acc": 0.5, "val_loss": val_loss, "val_acc": 0.5}


def test_early_stopping_counts_stale_epochs_with_min_delta():
    t = load_config(None, ["train.early_stopping_patience=2", "train.monitor_min_delta=0.01"]).train
    state = dict(monitor.INITIAL_STATE)
    improved = [monitor.end_epoch(state, _row(e + 1, v), t) for e, v in enumerate([1.0, 0.95, 0.945, 0.94])]
    assert improved == [True, True, False, False]        # 0.945 and 0.94 are within min_delta of 0.95
    assert state["best_epoch"] == 2 and state["best_score"] == 0.95
    assert state["stopped_early"]


def test_val_acc_monitor_prefers_higher_and_falls_back_to_train():
    t = load_config(None, ["train.monitor=val_acc"]).train
    state = dict(monitor.INITIAL_STATE)
    rows = [{"epoch": 1, "train_loss": 1, "train_acc": 0.5, "val_acc": 0.6},
            {"epoch": 2, "train_loss": 1, "train_acc": 0.5, "val_acc": 0.7},
            {"epoch": 3, "train_loss": 1, "train_acc": 0.5, "val_acc": 0.65}]
    assert [monitor.end_epoch(state, r, t) for r in rows] == [True, True, False]
    assert monitor.monitored({"train_acc": 0.3, "epoch": 1}, "val_acc") == ("train_acc", 0.3, True)


def test_plateau_cuts_lr_after_patience_and_respects_lr_min():
    t = load_config(None, ["train.schedule=plateau", "train.lr_plateau_patience=1", "train.lr=1.0",
                           "train.lr_decay_factor=0.5", "train.lr_min=0.2"]).train
    state = dict(monitor.INITIAL_STATE)
    scales = []
    for e, v in enumerate([1.0, 1.0, 1.0, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]):
        monitor.end_epoch(state, _row(e + 1, v), t)
        scales.append(state["lr_scale"])
    # bad epochs: 2, 3 (cut after the 2nd), then 5, 6 (cut), 7, 8 (cut, floored at lr_min / lr), ...
    assert scales == pytest.approx([1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.2, 0.2, 0.2])


def _config(tmp_path, tiny_data, epochs, *sets):
    train, test = tiny_data
    return load_config(None, [f"data.train={train}", f"data.test={test}", "data.validation=40",
                              "model.layers=[8, 16, 12, 3]", "model.activation=relu", "seed=5",
                              "train.batch_size=16", f"train.epochs={epochs}", *sets])


def _fit(cfg, run_dir, resume=None):
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    return fit(cfg, run_dir, resume=resume, quiet=True)


RESUMABLE = ["train.optimizer=adam", "train.lr=0.01", "model.dropout=0.3", "train.schedule=plateau",
             "train.lr_plateau_patience=0", "train.lr_decay_factor=0.5", "train.monitor_min_delta=0.02",
             "train.early_stopping_patience=3"]


def test_resume_reproduces_adam_dropout_plateau_and_early_stopping_bit_exactly(tmp_path, tiny_data):
    straight = _fit(_config(tmp_path, tiny_data, 8, *RESUMABLE), str(tmp_path / "a"))
    _fit(_config(tmp_path, tiny_data, 3, *RESUMABLE), str(tmp_path / "b"))
    ckpt = checkpoint.load(str(tmp_path / "b" / "checkpoints" / "last.npz"))
    assert ckpt.meta["epoch"] == 3 and "plateau_wait" in ckpt.meta and int(ckpt.optimizer["t"]) > 0
    resumed = _fit(_config(tmp_path, tiny_data, 8, *RESUMABLE), str(tmp_path / "b"), resume=ckpt)
    a = checkpoint.load(str(tmp_path / "a" / "checkpoints" / "last.npz"))
    b = checkpoint.load(str(tmp_path / "b" / "checkpoints" / "last.npz"))
    for x, y in zip(a.params + list(a.optimizer.values()), b.params + list(b.optimizer.values())):
        np.testing.assert_array_equal(x, y)
    for key in monitor.INITIAL_STATE:
        assert a.meta[key] == b.meta[key], key
    untimed = lambda row: {k: v for k, v in row.items() if k != "seconds"}
    assert untimed(straight["final"]) == untimed(resumed["final"])
    assert straight["stopped_early"] == resumed["stopped_early"]


def test_early_stopping_stops_and_restore_best_puts_back_best_weights(tmp_path, tiny_data):
    cfg = _config(tmp_path, tiny_data, 30, "train.lr=0.5", "train.momentum=0.9", "train.monitor=val_acc",
                  "train.early_stopping_patience=2", "train.restore_best=true")
    summary = _fit(cfg, str(tmp_path / "r"))
    assert summary["stopped_early"] and summary["epochs"] < 30
    assert summary["epochs"] == summary["best"]["epoch"] + 2
    # the final test figures are those of the best checkpoint
    assert summary["test"]["acc"] == summary["best"]["test_acc"]
    # a resume of a run that stopped early trains no further
    ckpt = checkpoint.load(str(tmp_path / "r" / "checkpoints" / "last.npz"))
    again = _fit(cfg, str(tmp_path / "r"), resume=ckpt)
    assert again["epochs"] == summary["epochs"]
