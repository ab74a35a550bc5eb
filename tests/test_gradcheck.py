"""gradcheck: it passes on correct gradients for every activation x loss, and fails (exit 1) on broken ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from mbtrain import activations, gradcheck, losses, optim
from mbtrain.cli import app
from mbtrain.model import MLP, init_params

runner = CliRunner()


def random_targets(output: str, K: int, m: int, rng) -> np.ndarray:
    """One-hot rows for softmax, values in [0, 1] for sigmoid outputs, real values otherwise."""
    if output.startswith("softmax"):
        return np.eye(m)[rng.integers(0, m, K)]
    if output.startswith("sigmoid"):
        return rng.uniform(0, 1, (K, m))
    return rng.standard_normal((K, m))


def random_problem(activation: str, output: str, seed: int, dropout: float = 0.0):
    """A random small float64 network (1-2 hidden layers, biases N(0, 1)), K samples, dropout masks."""
    rng = np.random.default_rng(seed)
    layers = [int(rng.integers(2, 6))] + [int(rng.integers(2, 7)) for _ in range(int(rng.integers(1, 3)))] \
        + [int(rng.integers(2, 5))]
    params = init_params(layers, "scaled_normal", "normal", activation, rng, np.float64)
    K = int(rng.integers(1, 6))
    X = rng.standard_normal((K, layers[0]))
    masks = [(rng.random((K, m)) >= dropout) / (1 - dropout) for m in layers[1:-1]] if dropout else None
    return MLP(params, activation, output), X, random_targets(output, K, layers[-1], rng), masks


@pytest.mark.parametrize("output", list(losses.OUTPUTS))
@pytest.mark.parametrize("activation", list(activations.ACTIVATIONS))
def test_passes_for_every_activation_and_loss(activation, output):
    for seed, weight_decay, dropout in ((0, 0.0, 0.0), (1, 0.3, 0.0), (2, 0.1, 0.4)):
        model, X, Y, masks = random_problem(activation, output, seed, dropout)
        report = gradcheck.check_model(model, X, Y, weight_decay, masks=masks)
        assert report.passed, gradcheck.format_report(report)
        for p in report.params:                       # every entry of these small arrays was compared
            assert p.comparisons["vectorized_vs_numerical"].entries + p.kinks_skipped == int(np.prod(p.shape))
            assert p.comparisons["vectorized_vs_loop"].entries == int(np.prod(p.shape))


def test_every_name_the_config_allows_is_covered():
    """The parametrized test above runs every registry entry; the config may name nothing else."""
    from mbtrain import config
    assert set(config.ACTIVATIONS) == set(activations.ACTIVATIONS)
    assert set(config.OUTPUTS) == set(losses.OUTPUTS)


def failing(report) -> set[tuple[int, str, str]]:
    return {(p.layer, p.name, kind) for p in report.params for kind, c in p.comparisons.items() if not c.passed}


def test_broken_backward_fails_vectorized_comparisons_only(monkeypatch):
    model, X, Y, _ = random_problem("tanh", "softmax_cross_entropy", 2)
    original = MLP.backward

    def backward_off_by_one_percent(self, dZ):
        original(self, dZ)
        self.grads[0] *= 1.01

    monkeypatch.setattr(MLP, "backward", backward_off_by_one_percent)
    report = gradcheck.check_model(model, X, Y)
    assert not report.passed
    assert failing(report) == {(1, "W", "vectorized_vs_loop"), (1, "W", "vectorized_vs_numerical")}


def test_dropout_mask_forgotten_in_the_backward_pass_fails(monkeypatch):
    model, X, Y, masks = random_problem("sigmoid", "softmax_cross_entropy", 7, dropout=0.5)
    assert len(model.weights) == 3 and any((m == 0).any() for m in masks)
    original = MLP.backward

    def backward_without_mask(self, dZ):             # the next layer still saw A * mask
        saved, self.masks = self.masks, [np.ones_like(m) for m in self.masks]
        original(self, dZ)
        self.masks = saved

    monkeypatch.setattr(MLP, "backward", backward_without_mask)
    report = gradcheck.check_model(model, X, Y, masks=masks)
    assert {(l, kind) for l, _, kind in failing(report)} == \
        {(l, kind) for l in (1, 2) for kind in ("vectorized_vs_loop", "vectorized_vs_numerical")}


def test_forgetting_to_average_over_the_batch_fails(monkeypatch):
    """A loss whose delta lacks the 1/K: the loop (batches of one) and the numbers still agree."""
    fused = losses.OUTPUTS["sigmoid_cross_entropy"]

    def summed(Z, Y, dZ=None):
        loss, dZ = fused.loss_and_delta(Z, Y, dZ)
        return loss, dZ * len(Z)

    monkeypatch.setitem(losses.OUTPUTS, "sigmoid_cross_entropy", fused._replace(loss_and_delta=summed))
    rng = np.random.default_rng(3)
    model = MLP(init_params([3, 4, 2], "xavier", "normal", "sigmoid", rng, np.float64),
                "sigmoid", "sigmoid_cross_entropy")
    X, Y = rng.standard_normal((4, 3)), rng.uniform(0, 1, (4, 2))
    report = gradcheck.check_model(model, X, Y)
    kinds = {kind for _, _, kind in failing(report)}
    assert kinds == {"vectorized_vs_loop", "vectorized_vs_numerical"}


def test_wrong_activation_derivative_fails_against_finite_differences(monkeypatch):
    tanh = activations.ACTIVATIONS["tanh"]
    monkeypatch.setitem(activations.ACTIVATIONS, "tanh",
                        tanh._replace(derivative=lambda Z, A, out=None: np.subtract(1, A, out=out)))
    model, X, Y, _ = random_problem("tanh", "softmax_cross_entropy", 4)
    report = gradcheck.check_model(model, X, Y)
    assert (1, "W", "loop_vs_numerical") in failing(report)
    assert (1, "W", "vectorized_vs_numerical") in failing(report)


def test_l2_ignored_by_the_optimizer_fails(monkeypatch):
    monkeypatch.setattr(optim.SGD, "step", lambda self, grads: [p.__isub__(self.lr * g)
                                                                  for p, g in zip(self.params, grads)])
    model, X, Y, _ = random_problem("relu", "softmax_cross_entropy", 5)
    report = gradcheck.check_model(model, X, Y, weight_decay=0.5)
    assert {(l, n) for l, n, kind in failing(report) if kind == "vectorized_vs_numerical"} == \
        {(l, "W") for l in range(1, len(model.weights) + 1)}


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop", "adam"])
def test_coupled_l2_of_each_optimizer(optimizer, monkeypatch):
    model, X, Y, _ = random_problem("sigmoid", "sigmoid_cross_entropy", 6)
    assert gradcheck.check_model(model, X, Y, weight_decay=0.4, optimizer=optimizer).passed
    if optimizer != "sgd":                          # their L2 comes from optim._coupled_l2: break it
        monkeypatch.setattr(optim, "_coupled_l2", lambda p, dp, i, wd: dp + (2 * wd * p if i % 2 == 0 else 0))
        assert not gradcheck.check_model(model, X, Y, weight_decay=0.4, optimizer=optimizer).passed


def test_relu_kink_within_h_is_skipped_not_failed():
    # z = 1e-7 * x0 + 0.5 * x1 with x = (1, 0): moving W[0, 0] by +-1e-5 carries z across 0.
    params = [np.array([[1e-7, 0.5]]), np.zeros(1), np.array([[1.0], [-1.0]]), np.zeros(2)]
    model = MLP(params, "relu", "softmax_cross_entropy")
    report = gradcheck.check_model(model, np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]]))
    assert report.params[0].kinks_skipped == 1 and report.params[1].kinks_skipped == 1
    assert report.passed, gradcheck.format_report(report)


def test_big_arrays_get_a_random_subset():
    rng = np.random.default_rng(0)
    model = MLP(init_params([30, 20, 3], "xavier", "zeros", "tanh", rng, np.float64), "tanh",
                "softmax_cross_entropy")
    report = gradcheck.check_model(model, rng.standard_normal((3, 30)), np.eye(3), fd_entries=10)
    W1, b1 = report.params[0], report.params[1]
    assert W1.comparisons["vectorized_vs_numerical"].entries == 10
    assert W1.comparisons["vectorized_vs_loop"].entries == 600
    assert b1.comparisons["vectorized_vs_numerical"].entries == 10
    assert report.params[3].comparisons["vectorized_vs_numerical"].entries == 3
    assert report.passed


def test_a_column_major_input_layer_is_checked_in_place():
    """W0 of 64 neurons is stored column-major (model.weight_order): every entry perturbed is the
    model's own (a perturbed copy would give zero numerical gradients and fail)."""
    rng = np.random.default_rng(3)
    model = MLP(init_params([4, 64, 3], "xavier", "normal", "tanh", rng, np.float64), "tanh",
                "softmax_cross_entropy")
    assert model.weights[0].flags.f_contiguous and not model.weights[0].flags.c_contiguous
    report = gradcheck.check_model(model, rng.standard_normal((5, 4)), np.eye(3)[[0, 1, 2, 0, 1]], 0.1,
                                   fd_entries=256)
    assert report.passed, gradcheck.format_report(report)
    assert report.params[0].comparisons["vectorized_vs_numerical"].entries == 256


def test_float32_model_is_refused():
    rng = np.random.default_rng(0)
    model = MLP(init_params([2, 2], "xavier", "zeros", "tanh", rng, np.float32), "tanh", "softmax_cross_entropy")
    with pytest.raises(gradcheck.MbtrainError, match="float64"):
        gradcheck.check_model(model, np.ones((1, 2)), np.eye(2)[:1])


# ---------------------------------------------------------------- the command

def test_cli_passes_on_tiny_config(tiny_config):
    result = runner.invoke(app, ["gradcheck", tiny_config, "--samples", "5"])
    assert result.exit_code == 0, result.output
    assert "PASS: all 4 arrays agree" in result.output
    assert result.output.count("vectorized vs loop") == 4


def test_cli_json_and_overrides(tiny_config):
    result = runner.invoke(app, ["gradcheck", tiny_config, "--json", "--set", "model.activation=relu",
                                 "--set", "train.weight_decay=0.01", "--set", "model.layers=[8,6,5,3]"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] and report["samples"] == 8 and report["weight_decay"] == 0.01
    assert [p["shape"] for p in report["params"]] == [[6, 8], [6], [5, 6], [5], [3, 5], [3]]


def test_cli_l2_as_training_scales_it(tiny_config):
    args = ["gradcheck", tiny_config, "--json", "--set", "train.weight_decay=2"]
    nielsen = json.loads(runner.invoke(app, args + ["--set", "train.weight_decay_scaling=train_size"]).output)
    assert nielsen["passed"] and nielsen["weight_decay"] == 2 / 200            # 240 samples - 40 validation
    adamw = json.loads(runner.invoke(app, args + ["--set", "train.optimizer=adamw", "--set", "train.momentum=0"]).output)
    assert adamw["passed"] and adamw["weight_decay"] == 0 and "decoupled" in adamw["weight_decay_from"]


def test_cli_dropout_uses_one_fixed_mask(tiny_config):
    args = ["gradcheck", tiny_config, "--json", "--set", "model.layers=[8,12,6,3]"]
    plain = json.loads(runner.invoke(app, args).output)
    dropped = json.loads(runner.invoke(app, args + ["--set", "model.dropout=0.5"]).output)
    assert plain["passed"] and dropped["passed"]
    assert plain["dropout_kept"] is None and 0.2 < dropped["dropout_kept"] < 0.8
    assert dropped["loss"] != plain["loss"]                               # the mask is in the loss
    assert "dropout  0.5 on hidden layers" in runner.invoke(app, args[:2] + ["--set", "model.dropout=0.5"]).output


def test_cli_regression_identity_mse(tmp_path):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((50, 4)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x=x, y=np.stack([x.sum(1), x[:, 0] * x[:, 1]], axis=1))
    cfg = {"data": {"train": str(tmp_path / "reg.npz"), "validation": 0},
           "model": {"layers": [4, 5, 2], "activation": "leaky_relu", "output": "identity_mse"}}
    (tmp_path / "reg.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["gradcheck", str(tmp_path / "reg.yaml"), "--samples", "6"])
    assert result.exit_code == 0, result.output
    assert "identity_mse" in result.output and "PASS: all 4 arrays" in result.output


def test_cli_exits_1_on_a_broken_gradient(tiny_config, monkeypatch):
    original = MLP.backward

    def broken(self, dZ):
        original(self, dZ)
        self.grads[-1] += 1e-3                       # last bias off by a constant

    monkeypatch.setattr(MLP, "backward", broken)
    result = runner.invoke(app, ["gradcheck", tiny_config])
    assert result.exit_code == 1
    assert "FAIL: layer 2 b (1 of 4 arrays)" in result.output


def test_cli_checks_a_checkpoint(tiny_config, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["fit", tiny_config, "--out", str(out), "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["gradcheck", "--checkpoint", str(out / "checkpoints" / "last.npz"), "--json"])
    assert result.exit_code == 0, result.output
    trained = json.loads(result.output)
    fresh = json.loads(runner.invoke(app, ["gradcheck", tiny_config, "--json"]).output)
    assert trained["passed"] and trained["loss"] < fresh["loss"]     # the trained weights were checked


def test_samples_are_what_training_sees(tiny_config, tiny_data):
    """With data.normalize = standardize, the checked rows are standardized with the training split's statistics."""
    from mbtrain.config import load_config
    cfg = load_config(tiny_config, ["data.normalize=standardize"])
    X, Y, _, n_train = gradcheck.take_samples(cfg, 200, gradcheck.gradcheck_rng(cfg.seed))
    x = np.load(tiny_data[0])["x"][:200].astype(np.float64)          # 240 rows, the last 40 validate
    assert n_train == 200
    assert np.allclose(X, (x - x.mean(axis=0)) / x.std(axis=0), atol=1e-5)
    assert np.array_equal(Y.argmax(axis=1), np.load(tiny_data[0])["y"][:200])


def test_cli_checks_a_normalized_checkpoint(tiny_config, tmp_path):
    out = tmp_path / "run"
    fit = runner.invoke(app, ["fit", tiny_config, "--out", str(out), "--quiet", "--set", "data.normalize=unit"])
    assert fit.exit_code == 0, fit.output
    result = runner.invoke(app, ["gradcheck", "--checkpoint", str(out / "checkpoints" / "last.npz")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, message", [
    (["--samples", "100000"], "has only 200 training samples"),
    (["--samples", "0"], "--samples 0: expected at least 1"),
])
def test_cli_bad_input_exits_2(tiny_config, args, message):
    from subprocess import run
    import sys
    proc = run([sys.executable, "-m", "mbtrain", "gradcheck", tiny_config, *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr and "Traceback" not in proc.stderr


def test_cli_needs_config_or_checkpoint():
    result = runner.invoke(app, ["gradcheck"])
    assert result.exit_code == 2
