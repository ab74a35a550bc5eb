"""Plotting runs: training and validation curves of one or several run directories in one figure.

matplotlib is an optional extra (`pip install 'mbtrain[plot]'`); it is imported only here,
only when a plot is asked for.

    mbtrain plot runs/sweep/* --out curves.png --metric val_acc
"""

from __future__ import annotations

import io
import os

from mbtrain import runs
from mbtrain.checkpoint import write_atomic
from mbtrain.compare import read_metrics
from mbtrain.errors import CheckpointError, MbtrainError

# --metric: a metrics.csv column, or loss / acc for the training and validation pair
PAIRS = {"loss": ("train_loss", "val_loss"), "acc": ("train_acc", "val_acc")}
SINGLE = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
FORMATS = (".png", ".pdf", ".svg")
INSTALL_HINT = "mbtrain plot needs matplotlib, which is not installed: pip install 'mbtrain[plot]'"


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or MbtrainError saying how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MbtrainError(INSTALL_HINT) from None
    return plt


def _integer_locator():
    from matplotlib.ticker import MaxNLocator
    return MaxNLocator(integer=True)


def load_curves(run_dirs: list[str]) -> list[tuple[str, list[dict]]]:
    """(legend label, metrics rows) per run; MbtrainError for a directory that is not a run."""
    curves = []
    for run_dir in run_dirs:
        if not os.path.isdir(run_dir):
            raise MbtrainError(f"{run_dir}: no such run directory")
        if not os.path.exists(os.path.join(run_dir, "metrics.csv")) and \
                not os.path.exists(os.path.join(run_dir, "config.yaml")):
            raise MbtrainError(f"{run_dir}: not a run directory (no metrics.csv or config.yaml)")
        label = os.path.basename(os.path.normpath(run_dir))
        status = runs.read_status(run_dir)
        if status not in (None, "completed"):
            label += f" ({status})"
        curves.append((label, read_metrics(run_dir)))
    return curves


def panels(metric: str | None) -> list[list[str]]:
    """The metrics.csv columns drawn in each panel."""
    if metric is None:
        return [list(PAIRS["loss"]), list(PAIRS["acc"])]
    if metric in PAIRS:
        return [list(PAIRS[metric])]
    if metric in SINGLE:
        return [[metric]]
    raise MbtrainError(f"--metric {metric!r}: expected one of {', '.join([*PAIRS, *SINGLE])}")


def plot_runs(run_dirs: list[str], out: str, metric: str | None = None) -> list[str]:
    """Draw the curves of `run_dirs` into the image file `out` (written atomically).

    Returns the labels of runs with no completed epoch yet (drawn as nothing).
    """
    ext = os.path.splitext(out)[1].lower()
    if ext not in FORMATS:
        raise MbtrainError(f"--out {out}: expected a file ending in {', '.join(FORMATS)}")
    columns = panels(metric)
    curves = load_curves(run_dirs)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(columns), figsize=(6 * len(columns), 4.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, names in zip(axes[0], columns):
        for i, (label, rows) in enumerate(curves):
            for name in names:
                points = [(r["epoch"], r[name]) for r in rows if r.get(name) is not None]
                if not points:
                    continue
                style = "--" if name.startswith("val_") and len(names) > 1 else "-"
                ax.plot(*zip(*points), style, color=colors[i % len(colors)],
                        marker="." if len(points) < 30 else None, label=f"{label} {name}" if len(names) > 1 else label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(_integer_locator())
        pair = next((k for k, v in PAIRS.items() if list(v) == names), None)
        ax.set_ylabel(f"{pair} (solid: train, dashed: validation)" if pair else names[0])
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=ext[1:], dpi=110)
    plt.close(fig)
    try:
        write_atomic(out, buf.getvalue())
    except CheckpointError as e:        # write_atomic speaks of checkpoints; this is a plot
        raise MbtrainError(str(e).replace("cannot write checkpoint", "cannot write plot")) from None
    return [label for label, rows in curves if not rows]
