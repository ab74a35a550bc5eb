"""Learning-rate schedules: the learning rate as a pure function of the global step.

Being a pure function of the step (not a running state) keeps resumed runs exact.

    mbtrain fit configs/mnist.yaml --set train.schedule=cosine
"""

from __future__ import annotations

import math


def constant(lr: float, step: int, total_steps: int) -> float:
    return lr


def cosine(lr: float, step: int, total_steps: int) -> float:
    """Cosine decay from lr at step 0 towards 0 at the last step: lr/2 (1 + cos(pi t / T))."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


SCHEDULES = {"constant": constant, "cosine": cosine}


def lr_at(train_cfg, step: int, steps_per_epoch: int) -> float:
    """Learning rate for global step `step` (0-based) under train_cfg.schedule."""
    return SCHEDULES[train_cfg.schedule](train_cfg.lr, step, train_cfg.epochs * steps_per_epoch)
