"""One training step, as `mbtrain fit` and `mbtrain bench` run it: forward, loss, backward, guard, update.

The general path forms every gradient, checks them (mbtrain.guard: a non-finite loss or
gradient stops training before any parameter changes) and hands them to the optimizer. Without
clipping, which needs the gradients' norm, and from VOUCH_MIN_PARAMS parameters, the check is
the same vouching as below: when the errors and layer inputs bound every gradient entry within
the dtype's range, no pass over the gradients is made (guard.check_step makes one when they do
not: its messages stay the same).

Plain SGD (no momentum, no weight decay, no clipping) takes a fused path when numpy's BLAS
allows it (mbtrain.gemm): after the errors dZ of every layer are known and vouched for, each
weight update is made by the weight-gradient product itself, and each bias update by the
product that sums the errors over the batch (a row of K ones),

    W = W - lr dZ^T A_prev                  (m, n)
    b = b - lr 1^T dZ                       (m,)

so no dW or db array is written and no pass over the weights follows. The guard vouches from the
errors and layer inputs, which bound every gradient entry; when it cannot, the step falls back
to the general path, which forms the gradients and checks them. Both paths are deterministic;
they can differ in the last bit (the BLAS kernel may fuse the multiply and the add).

    mbtrain bench configs/bench-b.yaml        # reports which path the step took
"""

from __future__ import annotations

import numpy as np

from mbtrain import gemm, guard, optim
from mbtrain.errors import MbtrainError
from mbtrain.model import MLP


# Mean weights per layer from which the fused step measured faster (README, Performance): below
# it, a BLAS call through ctypes costs more than the pass over the weights it saves.
FUSE_MIN_WEIGHTS = 1 << 15


# Parameters from which the general path vouches from the sums of squares instead of a pass over
# the gradients (clip_norm 0): one dot product per layer's input and error, against one over every
# parameter. Whole steps alternated in one process (/work/notes/s11/vouchab.py, 20 rounds): mnist.yaml
# (407,056 parameters) 0.947, lecun-800 0.95-0.97, mnist-fast (203,530) 0.98, keras-mnist-mlp 0.94
# of the time; nielsen-ch3-100-l2 (79,510) 1.00-1.03; nielsen-ch3-30 (23,860) 1.03-1.06, slower.
VOUCH_MIN_PARAMS = 1 << 17


def fuses(model: MLP, opt, clip_norm: float, setting: str = "auto") -> bool:
    """True when the step folds opt's update into the weight-gradient products (train.fused_update).

    Raises MbtrainError for `on` where numpy's BLAS gemm cannot be found.
    """
    plain = type(opt) is optim.SGD and not opt.momentum and not opt.weight_decay and not clip_norm
    if setting == "off" or not plain:
        return False
    if not gemm.available(model.dtype):
        if setting == "on":
            raise MbtrainError("train.fused_update = on: the gemm routine of numpy's BLAS was not found "
                               "(mbtrain/gemm.py); use auto or off")
        return False
    return setting == "on" or sum(W.size for W in model.weights) / len(model.weights) >= FUSE_MIN_WEIGHTS


class TrainStep:
    """step(X, Y, masks) -> the batch's mean loss, the model's parameters updated by `opt`.

    input_bound: a bound on |x| for every entry of every X this step will see (the training
    set's Dataset.entry_bound()), or None; the fused path's guard then bounds ||X|| from it
    instead of taking a dot product over X (mbtrain.guard.batch_squares).
    """

    def __init__(self, model: MLP, opt, clip_norm: float = 0.0, fused_update: str = "auto",
                 input_bound: float | None = None):
        self.model, self.opt, self.clip_norm = model, opt, clip_norm
        self.fused = fuses(model, opt, clip_norm, fused_update)
        self.input_bound = input_bound
        self.vouches = self.fused or (not clip_norm and sum(p.size for p in model.params) >= VOUCH_MIN_PARAMS)
        model.squares = self.vouches                 # the guard's sums of squares, noted in passing

    def __call__(self, X: np.ndarray, Y: np.ndarray, masks: list[np.ndarray] | None = None) -> float:
        model = self.model
        model.forward(X, masks)                                        # (K, m_L)
        if self.fused:
            loss = model.loss_and_errors(Y)                            # every dZ, no db or dW
            if self._vouched(loss, X):
                model.sgd_update(model.dtype.type(self.opt.lr), model.layer_inputs())   # b -= lr 1^T dZ, W -= lr dZ^T A_prev
                return loss
            model.bias_gradients()                                     # not vouched for: form db and dW,
            model.weight_gradients()                                   # check them
        else:
            loss = model.loss_and_backward(Y)
            if self.vouches and self._vouched(loss, X):                # every dW and db finite: no pass over them
                self.opt.step(model.grads)
                return loss
        guard.check_step(loss, model.grads, self.clip_norm, model.grad_buffer)   # before the update
        self.opt.step(model.grads)
        return loss

    def _vouched(self, loss: float, X: np.ndarray) -> bool:
        """guard.vouch_from_squares for this batch X (K, n_0) and the errors of the last backward pass."""
        model = self.model
        model.input_squares[0] = guard.batch_squares(X, self.input_bound)
        return guard.vouch_from_squares(loss, model.error_squares, model.input_squares, X.shape[0], model.dtype)
