"""Guards on each step's gradient: divergence detection and clipping by global norm.

A non-finite loss or gradient stops training before the update, so the parameters and the
checkpoints on disk stay the last good ones (exit code 3). Clipping rescales all gradients
together when their global L2 norm sqrt(sum_l ||dW_l||^2 + ||db_l||^2) exceeds train.clip_norm.

    mbtrain fit configs/mnist.yaml --set train.clip_norm=5.0
"""

from __future__ import annotations

import math

import numpy as np

from mbtrain.errors import Diverged


def squared_norm(grads: list[np.ndarray], buffer: np.ndarray | None = None) -> float:
    """sum of squares of every gradient entry, accumulated in float64 across arrays.

    Each array's dot product runs in its own dtype (fast BLAS); a float32 overflow to inf
    is told apart from a real inf/nan by the caller. `buffer`: the one buffer the gradients
    are packed in (mbtrain.flat; its gaps are zeros), for a single dot product. np.vdot, unlike
    np.dot, raises no floating-point warning on an overflow (an answer here, not an accident),
    so no np.errstate is needed: entering one cost more than the dot product at batch 10
    (tests/test_guard.py checks that no warning appears).
    """
    total = 0.0
    for g in ([buffer] if buffer is not None else grads):
        total += float(np.vdot(g, g))
    return total


def check_step(loss: float, grads: list[np.ndarray], clip_norm: float,
               buffer: np.ndarray | None = None) -> float:
    """Raise Diverged for a non-finite loss or gradient; clip in place; return the global norm.

    The caller adds where it happened (epoch, step) to the message. `buffer`: see squared_norm.
    """
    if not math.isfinite(loss):
        raise Diverged(f"loss is {loss}")
    sq = squared_norm(grads, buffer)
    if not math.isfinite(sq):
        # a non-finite sum of squares is either a real inf/nan entry or a float32 overflow
        bad = next((l for l, g in enumerate(grads) if not np.isfinite(g).all()), None)
        if bad is not None:
            name = f"{'W' if bad % 2 == 0 else 'b'}{bad // 2}"
            raise Diverged(f"gradient d{name} has a non-finite value (loss {loss:.6g})")
        sq = sum(float(np.vdot(g.astype(np.float64), g.astype(np.float64))) for g in grads)
        if not math.isfinite(sq):
            raise Diverged(f"the gradient's global norm overflows (loss {loss:.6g})")
    norm = math.sqrt(sq)
    if clip_norm and norm > clip_norm:
        scale = grads[0].dtype.type(clip_norm / norm)
        for g in grads:
            g *= scale
    return norm


def vouch_for_fused_sgd(loss: float, errors: list[np.ndarray], inputs: list[np.ndarray],
                        input_bound: float | None = None) -> bool:
    """True when every gradient made from these errors and inputs is finite, without forming it.

    For the fused SGD step (mbtrain.step), which never forms dW = dZ^T A: every entry of dW_l
    is bounded by ||dZ_l|| ||A_l|| (Cauchy-Schwarz on its column pair), every bias gradient by
    sqrt(K) ||dZ_l||; both norms come from dot products over the (K, m) and (K, n) arrays, far
    fewer entries than the weights. False (a non-finite norm, or a bound beyond the dtype's
    range) means: form the gradients and check them the usual way (check_step). Raises Diverged
    for a non-finite loss. input_bound: a bound on every |x| of inputs[0], the batch (when the
    data tell it, Dataset.entry_bound), so ||X||^2 <= K n bound^2 needs no pass over X, the
    largest input (4.6 of the 10.7 us the guard took at setting A).
    """
    if not math.isfinite(loss):
        raise Diverged(f"loss is {loss}")
    error_squares = [float(np.vdot(dZ, dZ)) for dZ in errors]  # vdot: an overflow gives inf, no warning
    input_squares = [batch_squares(inputs[0], input_bound)] + [float(np.vdot(A, A)) for A in inputs[1:]]
    return vouch_from_squares(loss, error_squares, input_squares, errors[0].shape[0], errors[0].dtype)


def batch_squares(X: np.ndarray, input_bound: float | None = None) -> float:
    """||X||^2 of a batch X (K, n), or its bound K n input_bound^2 when input_bound bounds every |x|."""
    return X.size * input_bound * input_bound if input_bound is not None else float(np.vdot(X, X))


def vouch_from_squares(loss: float, error_squares: list[float], input_squares: list[float], K: int,
                       dtype) -> bool:
    """vouch_for_fused_sgd from the sums of squares ||dZ_l||^2 and ||A_l||^2 (or bounds on them) of
    each layer's errors and inputs, K rows each, taken by the caller (mbtrain.model notes them while
    each array is in cache). Raises Diverged for a non-finite loss."""
    if not math.isfinite(loss):
        raise Diverged(f"loss is {loss}")
    biggest = _MAX[np.dtype(dtype)]
    for e, a in zip(error_squares, input_squares):
        if not math.sqrt(e) * math.sqrt(max(a, K)) < biggest:   # also False for inf, nan
            return False
    return True


_MAX = {np.dtype(t): float(np.finfo(t).max) for t in (np.float32, np.float64)}
