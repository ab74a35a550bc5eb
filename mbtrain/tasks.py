"""What "right" means for each task: accuracy, multi-label exact match, or regression errors.

The task follows from the output and the targets:
    regression       model.output = identity_mse            -> loss (= MSE), MAE, R^2; no accuracy
    multilabel       a sigmoid output, m > 1, targets y given as an (N, m) array of 0/1
                     -> acc = exact match (every label right, threshold 0.5), per-label accuracy
    classification   everything else (labels y (N,), or one-hot rows) -> acc = argmax match

    mbtrain eval runs/regression/checkpoints/best.npz      # prints mse, mae, r2
"""

from __future__ import annotations

import numpy as np

TASKS = ("classification", "multilabel", "regression")


def task_of(output: str, y: np.ndarray, classes: int) -> str:
    """The task of a model `output` trained on raw targets `y` ((N,) labels or (N, m) rows)."""
    if output == "identity_mse":
        return "regression"
    if output.startswith("sigmoid") and y.ndim == 2 and classes > 1:
        return "multilabel"
    return "classification"


def count_correct(Z: np.ndarray, Y: np.ndarray, task: str) -> int:
    """Right samples in a batch: Z output-layer (K, m) pre-activations, Y targets (K, m)."""
    if task == "regression":
        return 0
    # np.count_nonzero: a boolean array's .sum() converts it first (1-1.5 us more per step at batch 64)
    if task == "multilabel":
        return int(np.count_nonzero(((Z > 0) == (Y >= 0.5)).all(axis=1)))   # sigmoid(z) > 0.5 <=> z > 0
    if Z.shape[1] == 1:
        return int(np.count_nonzero((Z[:, 0] > 0) == (Y[:, 0] >= 0.5)))
    return int(np.count_nonzero(Z.argmax(axis=1) == Y.argmax(axis=1)))


def evaluate_multilabel(model, dataset, batch_size: int) -> dict:
    """Mean loss, exact-match accuracy and per-label accuracy (N samples, m labels)."""
    m = model.layers[-1]
    total_loss, exact, n = 0.0, 0, 0
    label_right = np.zeros(m, np.int64)
    for X, Y in dataset.chunks(batch_size, model.dtype, m):
        Z = model.logits(X)                                          # (K, m)
        total_loss += float(model.out.loss(Z, Y).sum())
        right = (Z > 0) == (Y >= 0.5)                                # (K, m)
        exact += int(right.all(axis=1).sum())
        label_right += right.sum(axis=0)
        n += len(X)
    return {"loss": total_loss / n, "acc": exact / n, "n": n,
            "per_class_acc": [float(c) / n for c in label_right]}


def evaluate_regression(model, dataset, batch_size: int) -> dict:
    """MSE (the loss), MAE and R^2 over all outputs; R^2 is averaged over outputs like sklearn's.

    R^2 = 1 - SS_res / SS_tot per output, SS_tot = sum (y - mean y)^2 = sum y^2 - (sum y)^2 / N,
    accumulated in float64 over the batches.
    """
    m = model.layers[-1]
    n = 0
    sq_err, abs_err = np.zeros(m), np.zeros(m)
    y_sum, y_sq_sum = np.zeros(m), np.zeros(m)
    for X, Y in dataset.chunks(batch_size, model.dtype, m):
        Z = model.logits(X)                                          # (K, m)
        err = Z.astype(np.float64) - Y
        sq_err += (err * err).sum(axis=0)
        abs_err += np.abs(err).sum(axis=0)
        y_sum += Y.sum(axis=0, dtype=np.float64)
        y_sq_sum += (Y.astype(np.float64) ** 2).sum(axis=0)
        n += len(X)
    ss_tot = y_sq_sum - y_sum ** 2 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(ss_tot > 0, 1 - sq_err / ss_tot, np.nan)
    mse = float(sq_err.sum()) / (n * m)
    return {"loss": mse, "mse": mse, "mae": float(abs_err.sum()) / (n * m),
            "r2": float(np.nanmean(r2)) if np.isfinite(r2).any() else None, "n": n}
