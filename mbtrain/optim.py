"""Optimizers, in order of increasing complexity; state is plain arrays so checkpoints can hold it.

SGD with momentum mu, Nesterov, and L2 weight decay lambda on the weights (not biases):
    g = dW + lambda W
    v = mu v + g
    W -= lr * (g + mu v)   if nesterov
    W -= lr * v            otherwise (with mu = 0 this is plain SGD: W -= lr g)

    mbtrain fit configs/mnist.yaml --set train.momentum=0.9 --set train.nesterov=true
"""

from __future__ import annotations

import numpy as np


class SGD:
    """SGD with optional momentum, Nesterov and L2 weight decay; lr is set per step by the loop."""

    name = "sgd"

    def __init__(self, params: list[np.ndarray], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        self.params, self.lr = params, lr
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self.velocity = [np.zeros_like(p) for p in params] if momentum else []
        self._g = [np.empty_like(p) for p in params]

    def step(self, grads: list[np.ndarray]) -> None:
        lr = self.params[0].dtype.type(self.lr)
        for i, (p, dp) in enumerate(zip(self.params, grads)):
            g = dp
            if self.weight_decay and i % 2 == 0:                 # weights only, not biases
                g = np.multiply(p, self.weight_decay, out=self._g[i])
                g += dp
            if self.momentum:
                v = self.velocity[i]
                v *= self.momentum
                v += g
                if self.nesterov:
                    g = np.add(g, self.momentum * v, out=self._g[i])
                else:
                    g = v
            p -= lr * g

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to save in a checkpoint, by name."""
        return {f"velocity{i}": v for i, v in enumerate(self.velocity)}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        for i, v in enumerate(self.velocity):
            v[...] = arrays[f"velocity{i}"]


def make(cfg_train, params: list[np.ndarray]) -> SGD:
    return SGD(params, cfg_train.lr, cfg_train.momentum, cfg_train.nesterov, cfg_train.weight_decay)
