"""Learning-rate schedules: the learning rate as a function of the global step.

Every schedule but `plateau` is a pure function of the step, which keeps resumed runs exact;
`plateau` multiplies by a factor the loop keeps in its state dict (and so in the checkpoint),
see mbtrain/monitor.py. Linear warmup multiplies any of them:

    lr(t) = base(t) * min(1, (t + 1) / warmup_steps)      t = 0, 1, ... the global step

    mbtrain fit configs/mnist.yaml --set train.schedule=cosine --set train.warmup_epochs=1
"""

from __future__ import annotations

import math


def constant(lr: float, step: int, total_steps: int, steps_per_epoch: int, t) -> float:
    return lr


def step_decay(lr: float, step: int, total_steps: int, steps_per_epoch: int, t) -> float:
    """lr * factor^floor(epoch / lr_step_epochs): a drop at the start of every lr_step_epochs-th epoch."""
    epoch = step // steps_per_epoch
    return lr * t.lr_decay_factor ** (epoch // t.lr_step_epochs)


def exponential(lr: float, step: int, total_steps: int, steps_per_epoch: int, t) -> float:
    """lr * factor^(step / steps_per_epoch): times lr_decay_factor per epoch, smoothly per step."""
    return lr * t.lr_decay_factor ** (step / steps_per_epoch)


def cosine(lr: float, step: int, total_steps: int, steps_per_epoch: int = 1, t=None) -> float:
    """Cosine decay from lr at step 0 towards 0 at the last step: lr/2 (1 + cos(pi t / T))."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


# plateau's base is constant; its decays come from the loop state's lr_scale
SCHEDULES = {"constant": constant, "step": step_decay, "exponential": exponential, "cosine": cosine,
             "plateau": constant}


def warmup(step: int, warmup_steps: int) -> float:
    """The linear warmup multiplier: (t + 1) / warmup_steps, reaching 1 at the last warmup step."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def lr_at(train_cfg, step: int, steps_per_epoch: int, scale: float = 1.0) -> float:
    """Learning rate for global step `step` (0-based) under train_cfg.schedule.

    `scale` is the reduce-on-plateau multiplier (1.0 for the other schedules).
    """
    t = train_cfg
    base = SCHEDULES[t.schedule](t.lr, step, t.epochs * steps_per_epoch, steps_per_epoch, t)
    warmup_steps = round(getattr(t, "warmup_epochs", 0.0) * steps_per_epoch)
    return base * scale * warmup(step, warmup_steps)
