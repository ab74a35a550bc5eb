"""Short end-to-end runs: each optimizer and each loss trains a small problem in a second or two."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from mbtrain.config import load_config
from mbtrain.train import fit


def _fit(tmp_path, train, test, *sets):
    cfg = load_config(None, [f"data.train={train}", f"data.test={test}", "data.validation=40",
                             "seed=1", "train.batch_size=16", "train.epochs=6", *sets])
    run_dir = str(tmp_path / "run")
    os.makedirs(os.path.join(run_dir, "checkpoints"))
    summary = fit(cfg, run_dir, quiet=True)
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    return summary, rows


@pytest.mark.parametrize("optimizer", [
    ["train.optimizer=sgd", "train.lr=0.3"],
    ["train.optimizer=sgd", "train.lr=0.1", "train.momentum=0.9", "train.nesterov=true"],
    ["train.optimizer=rmsprop", "train.lr=0.005"],
    ["train.optimizer=adam", "train.lr=0.01"],
    ["train.optimizer=adamw", "train.lr=0.01", "train.weight_decay=0.01"]])
def test_each_optimizer_learns_the_blobs(tmp_path, tiny_data, optimizer):
    summary, rows = _fit(tmp_path, *tiny_data, "model.layers=[8, 16, 3]", "model.activation=tanh",
                         "model.dropout=0.1", *optimizer)
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.5 * losses[0]
    assert summary["test"]["acc"] >= 0.9


@pytest.mark.parametrize("output,lr", [("softmax_cross_entropy", 0.5), ("sigmoid_cross_entropy", 0.5),
                                       ("sigmoid_quadratic", 3.0)])
def test_each_classification_loss_learns_the_blobs(tmp_path, tiny_data, output, lr):
    summary, rows = _fit(tmp_path, *tiny_data, "model.layers=[8, 16, 3]", "model.activation=sigmoid",
                         f"model.output={output}", f"train.lr={lr}", "train.epochs=10")
    assert float(rows[-1]["train_loss"]) < 0.7 * float(rows[0]["train_loss"])
    assert summary["test"]["acc"] >= 0.9


def _regression_data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (300, 4)).astype(np.float32)
    y = np.stack([x @ [1.0, -2.0, 0.5, 0.0], np.sin(2 * x[:, 0])], axis=1).astype(np.float32)
    y += 0.05 * rng.standard_normal(y.shape).astype(np.float32)
    np.savez(tmp_path / "reg_train.npz", x=x[:240], y=y[:240])
    np.savez(tmp_path / "reg_test.npz", x=x[240:], y=y[240:])
    return str(tmp_path / "reg_train.npz"), str(tmp_path / "reg_test.npz")


def test_regression_reports_mse_mae_r2_instead_of_accuracy(tmp_path):
    summary, rows = _fit(tmp_path, *_regression_data(tmp_path), "model.layers=[4, 32, 2]",
                         "model.activation=tanh", "model.output=identity_mse", "train.optimizer=adam",
                         "train.lr=0.01", "train.epochs=30")
    assert float(rows[-1]["train_loss"]) < 0.1 * float(rows[0]["train_loss"])
    assert rows[-1]["train_acc"] == "" and rows[-1]["val_acc"] == ""
    assert float(rows[-1]["val_r2"]) > 0.9 and float(rows[-1]["val_mae"]) > 0
    test = summary["test"]
    assert test["acc"] is None and test["r2"] > 0.9 and test["mae"] < 0.3


def test_regression_with_one_output_takes_a_flat_y(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (200, 3)).astype(np.float32)
    y = (x.sum(axis=1) * 2.5).astype(np.float32)                    # (N,), not class labels
    np.savez(tmp_path / "flat.npz", x=x, y=y)
    summary, rows = _fit(tmp_path, str(tmp_path / "flat.npz"), str(tmp_path / "flat.npz"),
                         "model.layers=[3, 8, 1]", "model.activation=tanh", "model.output=identity_mse",
                         "train.optimizer=adam", "train.lr=0.02", "train.epochs=20")
    assert summary["test"]["r2"] > 0.95


def test_multilabel_sigmoid_cross_entropy_learns_independent_labels(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (300, 6)).astype(np.float32)
    y = (x[:, :3] > 0.5).astype(np.float32)                         # (N, 3): any number of labels on
    np.savez(tmp_path / "ml_train.npz", x=x[:240], y=y[:240])
    np.savez(tmp_path / "ml_test.npz", x=x[240:], y=y[240:])
    summary, rows = _fit(tmp_path, str(tmp_path / "ml_train.npz"), str(tmp_path / "ml_test.npz"),
                         "model.layers=[6, 24, 3]", "model.activation=relu",
                         "model.output=sigmoid_cross_entropy", "train.optimizer=adam", "train.lr=0.02",
                         "train.epochs=30")
    assert float(rows[-1]["train_loss"]) < 0.5 * float(rows[0]["train_loss"])
    assert summary["test"]["acc"] >= 0.8                            # every label of a sample right


def test_cli_fit_with_schedule_warmup_and_early_stopping(tmp_path, tiny_config):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "mbtrain", "fit", tiny_config, "--out", str(out), "--json",
         "--set", "train.epochs=12", "--set", "train.schedule=step", "--set", "train.lr_step_epochs=2",
         "--set", "train.warmup_epochs=1", "--set", "train.early_stopping_patience=2",
         "--set", "train.monitor=val_acc", "--set", "train.restore_best=true"],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["stopped_early"] and summary["epochs"] < 12
    with open(out / "metrics.csv") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    # epoch 1 starts in warmup (lr/steps), then the step schedule: 0.5 for epoch 2, 0.05 from epoch 3
    assert lrs[0] < 0.5 and lrs[1] == pytest.approx(0.5) and lrs[2] == pytest.approx(0.05)
