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

import math

import numpy as np

DROPOUT_STREAM = 2            # spawn_key[0]: 0 is init, 1 is shuffling (mbtrain.data.epoch_order)


# 32-bit words drawn per call: 64 KiB of raw output and 16 KiB of flags, small enough to be
# reused from the heap each time (a 512 KiB draw was mapped afresh, ~260 page faults a step)
CHUNK_WORDS = 1 << 14


def masks(seed: int, epoch: int, step: int, K: int, hidden: list[int], rate: float,
          dtype, out: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """One (K, m) mask per hidden layer of sizes `hidden`: entries 0 or 1/(1 - rate), in `dtype`.

    A unit is kept where the generator's next float32 draw u is below 1 - rate (as float32), in
    order, layer after layer: the masks of rng.random((K, m), dtype=np.float32) < 1 - rate, computed
    from the 32-bit words those draws are made of (_next_words) without forming the floats, bit for
    bit the same (tests/test_dropout_monitor.py compares them with numpy's draws). Drawn the same way
    whatever the dtype, so float32 and float64 runs drop the same units.
    out: C-contiguous (K, m) arrays of `dtype` to fill (Masks reuses them from step to step).
    """
    bits = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(DROPOUT_STREAM, epoch, step))).bit_generator
    below = _words_below(np.float32(1.0 - rate))
    scale = np.dtype(dtype).type(1.0 / (1.0 - rate))
    if out is None:
        out = [np.empty((K, m), dtype) for m in hidden]
    kept = np.empty(CHUNK_WORDS, bool)
    spare = None                                           # a half-word left for the next draw
    for mask in out:
        flat = mask.reshape(-1)                            # a view: out is C-contiguous
        at, n = 0, flat.size
        while at < n:
            if spare is not None:
                flat[at] = scale if spare < below else 0
                at, spare = at + 1, None
                continue
            count = min(CHUNK_WORDS, n - at)
            words, spare = _next_words(bits, count)
            if below < 1 << 32:
                np.less(words, below, out=kept[:count])
            else:
                kept[:count] = True
            np.multiply(kept[:count], scale, out=flat[at:at + count])     # 0 or 1/(1 - rate)
            at += count
    return out


class Masks:
    """masks() of each step of a run, drawn into buffers reused from step to step (one set per
    batch size): a step's masks are valid until the next call with the same K. None at rate 0
    (no dropout), so a training loop asks every step."""

    def __init__(self, seed: int, hidden: list[int], rate: float, dtype):
        self.seed, self.hidden, self.rate, self.dtype = seed, list(hidden), rate, np.dtype(dtype)
        self._buffers: dict[int, list[np.ndarray]] = {}

    def __call__(self, epoch: int, step: int, K: int) -> list[np.ndarray] | None:
        if not self.rate:
            return None
        if K not in self._buffers:
            self._buffers[K] = [np.empty((K, m), self.dtype) for m in self.hidden]
        return masks(self.seed, epoch, step, K, self.hidden, self.rate, self.dtype, out=self._buffers[K])


def _next_words(bits: np.random.PCG64, n: int) -> tuple[np.ndarray, int | None]:
    """The next n 32-bit words (n,) uint32 that float32 draws would take from `bits`, and the spare
    high half of the last 64-bit output when n is odd (the next draw's word), else None.

    numpy's float32 draw is (w >> 8) * 2^-24 of the next 32-bit word w, and PCG64 (default_rng's)
    hands out the low, then the high half of each 64-bit output (numpy's random/src/distributions
    and pcg64.h): the little-endian halves of its raw outputs, in order. A fresh generator holds no
    half-word yet.
    """
    raw = bits.random_raw((n + 1) // 2).astype("<u8", copy=False).view("<u4")
    return raw[:n], (int(raw[n]) if n % 2 else None)


def _words_below(keep: np.float32) -> int:
    """The integer t with (w >> 8) * 2^-24 < keep exactly when w < t, for 32-bit words w.

    (w >> 8) < keep 2^24 (exact: a power-of-two scaling), and for the integer w >> 8 that is
    (w >> 8) < ceil(keep 2^24), that is w < ceil(keep 2^24) * 2^8. 2^32 when keep is 1.
    """
    return math.ceil(float(keep) * (1 << 24)) << 8
