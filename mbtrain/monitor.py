"""The monitored metric: which epoch is best, when to stop early, when to cut lr on a plateau.

train.monitor names the metric (val_loss or val_acc; train_loss or train_acc when there is no
validation split). After each epoch `end_epoch` updates plain values in the loop's state dict,
which every checkpoint saves in its meta, so a resumed run decides exactly as an uninterrupted one:

    best_score, best_epoch   the best monitored value so far and its epoch (best.npz holds its weights)
    stale_epochs             epochs since the last improvement (early stopping's patience counter)
    plateau_wait             the same, but reset whenever the plateau schedule cuts lr
    lr_scale                 the product of the plateau cuts, multiplying the schedule's lr
    stopped_early            true once early stopping fired (a resume then trains no further)

An improvement is a change of more than train.monitor_min_delta in the good direction.

    mbtrain fit configs/mnist.yaml --set train.early_stopping_patience=3 --set train.restore_best=true
"""

from __future__ import annotations

INITIAL_STATE = {"best_score": None, "best_epoch": None, "stale_epochs": 0, "plateau_wait": 0,
                 "lr_scale": 1.0, "stopped_early": False}


def monitored(row: dict, monitor: str) -> tuple[str, float, bool]:
    """(name, value, higher_is_better) of the monitored metric in an epoch's metrics row."""
    name = monitor if row.get(monitor) is not None else monitor.replace("val_", "train_")
    return name, float(row[name]), name.endswith("_acc")


def is_improvement(value: float, best: float | None, higher_is_better: bool, min_delta: float) -> bool:
    if best is None:
        return True
    return value > best + min_delta if higher_is_better else value < best - min_delta


def end_epoch(state: dict, row: dict, train_cfg) -> bool:
    """Update best/early-stopping/plateau state from this epoch's row; True if it is the new best."""
    t = train_cfg
    _, value, higher = monitored(row, t.monitor)
    improved = is_improvement(value, state["best_score"], higher, t.monitor_min_delta)
    if improved:
        state.update(best_score=value, best_epoch=int(row["epoch"]), stale_epochs=0, plateau_wait=0)
    else:
        state["stale_epochs"] += 1
        state["plateau_wait"] += 1
    if t.early_stopping_patience and state["stale_epochs"] >= t.early_stopping_patience:
        state["stopped_early"] = True
    if t.schedule == "plateau" and not improved and state["plateau_wait"] > t.lr_plateau_patience:
        # cut lr by lr_decay_factor, but never below lr_min
        state["lr_scale"] = max(state["lr_scale"] * t.lr_decay_factor, t.lr_min / t.lr)
        state["plateau_wait"] = 0
    return improved
