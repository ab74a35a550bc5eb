"""Inverted dropout on hidden layers: the masks, a pure function of (seed, epoch, step).

In training each hidden activation is kept with probability q = 1 - rate and scaled by 1/q,
so its expected value is unchanged and evaluation uses the network as it is (no mask, no
rescaling). The mask multiplies the activation in the forward pass and, being the derivative
of that product, the error in the backward pass (model.MLP.forward(X, masks=...)).

Deriving each step's masks from (seed, epoch, step) instead of a running generator is what
makes a resumed run drop exactly the units the uninterrupted run dropped.

    mbtrain fit configs/keras-mnist-mlp.yaml        # model.dropout: 0.2
"""

from __future__ import annotations

import numpy as np

DROPOUT_STREAM = 2            # spawn_key[0]: 0 is init, 1 is shuffling (mbtrain.data.epoch_order)


def masks(seed: int, epoch: int, step: int, K: int, hidden: list[int], rate: float,
          dtype) -> list[np.ndarray]:
    """One (K, m) mask per hidden layer of sizes `hidden`: entries 0 or 1/(1 - rate), in `dtype`."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(DROPOUT_STREAM, epoch, step)))
    keep = 1.0 - rate
    out = []
    for m in hidden:
        # drawn in float32 whatever the dtype, so float32 and float64 runs drop the same units
        kept = rng.random((K, m), dtype=np.float32) < keep
        mask = kept.astype(dtype)
        mask *= np.dtype(dtype).type(1.0 / keep)
        out.append(mask)
    return out
