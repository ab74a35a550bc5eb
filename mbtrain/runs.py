"""Run directories: where a run's resolved config, metrics, checkpoints and summary live.

    runs/mnist-20261128-120000/
        config.yaml          the resolved config
        metrics.csv          one row per epoch
        checkpoints/last.npz, checkpoints/best.npz
        summary.json         final, best and test metrics, wall time, samples/s

    mbtrain fit configs/mnist.yaml --out runs/my-run
"""

from __future__ import annotations

import csv
import io
import json
import os
import time

from mbtrain.checkpoint import write_atomic
from mbtrain.errors import MbtrainError

METRICS = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


def default_dir(config_path: str | None, root: str = "runs") -> str:
    name = os.path.splitext(os.path.basename(config_path))[0] if config_path else "run"
    return os.path.join(root, f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")


def create(path: str | None, config_path: str | None) -> str:
    """Make a new run directory; a given one must not exist or be empty; a default one is made unique."""
    if path is not None:
        if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise MbtrainError(f"{path}: run directory already exists and is not empty; "
                               f"choose another --out or continue it with --resume")
        try:
            os.makedirs(os.path.join(path, "checkpoints"), exist_ok=True)
        except OSError as e:
            raise MbtrainError(f"{path}: cannot create run directory: {e.strerror}") from None
        return path
    base = default_dir(config_path)
    for i in range(1, 10_000):
        candidate = base if i == 1 else f"{base}-{i}"
        try:
            os.makedirs(candidate)
        except FileExistsError:
            continue
        except OSError as e:
            raise MbtrainError(f"{candidate}: cannot create run directory: {e.strerror}") from None
        os.makedirs(os.path.join(candidate, "checkpoints"))
        return candidate
    raise MbtrainError(f"{base}: cannot find a free run directory name")


def write_text(run_dir: str, name: str, text: str) -> None:
    write_atomic(os.path.join(run_dir, name), text.encode())


def write_json(run_dir: str, name: str, obj) -> None:
    write_text(run_dir, name, json.dumps(obj, indent=2) + "\n")


class MetricsLog:
    """metrics.csv: a header and one row per completed epoch, rewritten atomically each epoch."""

    def __init__(self, run_dir: str, completed_epochs: int = 0):
        self.path = os.path.join(run_dir, "metrics.csv")
        self.rows: list[dict] = []
        if completed_epochs and os.path.exists(self.path):
            with open(self.path, newline="") as f:
                # on resume keep exactly the epochs the checkpoint has completed
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= completed_epochs]

    def append(self, row: dict) -> None:
        self.rows.append({k: _fmt(row.get(k)) for k in METRICS})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRICS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(self.path, buf.getvalue().encode())


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)
