"""Optimizers, in order of increasing complexity; state is plain arrays so checkpoints can hold it.

L2 weight decay lambda applies to the weights, never the biases. For SGD, Adam and RMSprop it is
coupled, added to the gradient (PyTorch's `weight_decay`): g = dW + lambda W. AdamW decouples it.

SGD with momentum mu and Nesterov:
    v = mu v + g
    W -= lr * (g + mu v)   if nesterov
    W -= lr * v            otherwise (with mu = 0 this is plain SGD: W -= lr g)
RMSprop (Hinton, lecture 6e) with decay rho:
    s = rho s + (1 - rho) g^2
    W -= lr * g / (sqrt(s) + eps)
Adam (Kingma & Ba 2015), step t = 1, 2, ...:
    m = b1 m + (1 - b1) g
    v = b2 v + (1 - b2) g^2
    W -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
AdamW (Loshchilov & Hutter 2019): Adam on g = dW, after the decoupled decay W -= lr * lambda * W.

    mbtrain fit configs/mnist.yaml --set train.momentum=0.9 --set train.nesterov=true
    mbtrain fit configs/keras-mnist-mlp.yaml      # train.optimizer: rmsprop
"""

from __future__ import annotations

import math
import operator

import numpy as np

from mbtrain import flat, gemm


class _Pieces:
    """The matching pieces of params, grads and optimizer state an update streams over (mbtrain.flat).

    Packed arrays (a model's params and grads) give a few cache-sized pieces of one buffer each;
    separate arrays give their own pieces. Computed once per grads list and reused every step.
    """

    def __init__(self, params: list[np.ndarray], *state: list[np.ndarray]):
        self.params, self.state = params, state
        self._grads: tuple = ()
        self._pieces: list = []

    def __call__(self, grads: list[np.ndarray]) -> list[tuple]:
        if len(grads) != len(self._grads) or not all(map(operator.is_, grads, self._grads)):
            self._pieces = self._make(grads)
            self._grads = tuple(grads)
        return self._pieces

    def _make(self, grads: list[np.ndarray]) -> list[tuple[np.ndarray, ...]]:
        return flat.segments(self.params, grads, *self.state)


# Optimizer state decays geometrically where a gradient stays exactly zero (a dead ReLU unit, a
# pixel that is blank in every image): v = mu v reaches float32's subnormal range (below 2^-126)
# after a few hundred steps and then stays there, since 0.9 times the smallest subnormal rounds
# back to it. x86 computes on subnormals ~100x slower: mnist-fast's optimizer step took ~190 us
# up to step 700 and ~900 us from step 800 on, with ~10,000 subnormal velocities
# (/work/notes/s11/optctx.py). So every FLUSH_EVERY steps, state entries smaller in magnitude than
# FLUSH_BELOW are set to zero: from there a step moves no weight (lr mu v is far below a weight's
# last bit), and with mu >= 0.7 an entry takes over 100 steps to decay from there to a subnormal.
FLUSH_EVERY = 32
FLUSH_BELOW = {np.dtype(np.float32): 2.0 ** -100, np.dtype(np.float64): 2.0 ** -1000}


class _Flush:
    """Every FLUSH_EVERY optimizer steps, zero the state entries below FLUSH_BELOW (see above).

    The count is the optimizer's `steps`: a resumed fit sets it to the checkpoint's global step, so
    a resumed run flushes at the same steps as one never interrupted.
    """

    def __init__(self, state: list[list[np.ndarray]]):
        self.pieces = [piece for arrays in state if arrays for (piece,) in flat.segments(arrays)]
        largest = max((p.size for p in self.pieces), default=0)
        dtype = self.pieces[0].dtype if self.pieces else np.dtype(np.float32)
        self.below = dtype.type(FLUSH_BELOW[np.dtype(dtype)])
        self._magnitude, self._tiny = np.empty(largest, dtype), np.empty(largest, bool)

    def __call__(self, steps: int) -> None:
        if steps % FLUSH_EVERY:
            return
        for x in self.pieces:
            magnitude, tiny = self._magnitude[:x.size], self._tiny[:x.size]
            np.less(np.abs(x, out=magnitude), self.below, out=tiny)
            np.putmask(x, tiny, 0)


class SGD:
    """SGD with optional momentum, Nesterov and L2 weight decay; lr is set per step by the loop.

    blas_axpy: without momentum, take the step p -= lr g as one BLAS axpy per piece
    (mbtrain.gemm.AxpyPlan) instead of numpy's multiply and subtract, where numpy's BLAS has it;
    for one BLAS thread (train.threads = 1), as only there it measured faster. Same update up to
    rounding (the axpy may fuse the multiply and the add); deterministic either way.
    level1: with momentum or weight decay, take the step as BLAS axpy/axpby calls (_Level1Step),
    where numpy's BLAS has them: two to four passes over the parameters instead of numpy's seven
    to ten. Same update up to rounding.
    """

    name = "sgd"

    def __init__(self, params: list[np.ndarray], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, blas_axpy: bool = False,
                 level1: bool = True):
        self.params, self.lr = params, lr
        self.axpy = blas_axpy and not momentum and not weight_decay and gemm.axpy_available(params[0].dtype)
        self._plan = (None, None)                                # (pieces, their gemm.AxpyPlan)
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self.velocity = flat.zeros_like(params) if momentum else []
        routines = gemm.level1(params[0].dtype) if (momentum or weight_decay) and level1 else None
        self.level1 = _Level1Step(params, self.velocity, routines) if routines else None
        self.steps = 0                                           # steps taken (the flush's count)
        self._flush = _Flush([self.velocity])
        if self.level1 is not None:                              # needs no scratch
            return
        # scratch, so a step allocates nothing: g with weight decay, and the scaled step of a piece
        self._g = flat.zeros_like(params) if weight_decay else []
        self._step = np.empty(flat.largest_piece(params), params[0].dtype)
        self._pieces = _Pieces(params, *([self.velocity] if momentum else []))

    def step(self, grads: list[np.ndarray]) -> None:
        self.steps += 1
        if self.level1 is not None:
            self.level1(grads, self.lr, self.momentum, self.nesterov, self.weight_decay)
        else:
            self._numpy_step(grads)
        if self.momentum:
            self._flush(self.steps)

    def _numpy_step(self, grads: list[np.ndarray]) -> None:
        if self.axpy:                                            # W += (-lr) g, one pass per piece
            pieces = self._pieces(grads)
            if self._plan[0] is not pieces:
                self._plan = (pieces, gemm.AxpyPlan([(p, g) for p, g in pieces]))
            self._plan[1](-self.lr)                              # rounded to the dtype by the call
            return
        lr = self.params[0].dtype.type(self.lr)
        if self.weight_decay:
            grads = _add_l2(self.params, grads, self.weight_decay, self._g)
        pieces = self._pieces(grads)
        for p, g, *v in pieces:
            scratch = self._step[:p.size]
            direction = g
            if self.momentum:
                v = v[0]
                v *= self.momentum
                v += g                                           # v = mu v + g
                direction = v
                if self.nesterov:
                    direction = np.multiply(v, self.momentum, out=scratch)
                    direction += g                               # g + mu v
            p -= np.multiply(direction, lr, out=scratch)         # W -= lr * direction

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to save in a checkpoint, by name."""
        return {f"velocity{i}": v for i, v in enumerate(self.velocity)}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        for i, v in enumerate(self.velocity):
            v[...] = arrays[f"velocity{i}"]


class _ArrayPieces(_Pieces):
    """Matching 1-D pieces of each parameter array and of its gradient and state arrays, array by
    array (a piece is all weights or all biases), for steps made of BLAS level-1 calls
    (mbtrain.gemm.level1) and numpy calls on scratch arrays. Resolved once per grads list (_Pieces).

    Each piece is (n, weight?, views, addresses): the views (W, g, *state) of n entries each, in
    memory order, and their data addresses.
    """

    # entries per piece: three to five operands of 512 KiB stay in a core's L2; smaller pieces cost
    # more calls (SGD with Nesterov and decay over mnist.yaml's 407,056 parameters: 380 us in pieces
    # of 32,768 float32, 869 in pieces of 4,096), the whole array at once 550 us on one thread
    PIECE_BYTES = 1 << 19

    def largest(self) -> int:
        """The most entries a piece can have (a scratch array's size)."""
        return min(self.PIECE_BYTES // self.params[0].itemsize, max(p.size for p in self.params))

    def _make(self, grads: list[np.ndarray]) -> list[tuple]:
        per = self.PIECE_BYTES // self.params[0].itemsize
        pieces = []
        for i, p in enumerate(self.params):
            group = [p, grads[i]] + [s[i] for s in self.state]
            if len({flat.order(a) for a in group}) > 1 or not all(a.flags.forc for a in group) \
                    or grads[i].dtype != p.dtype or grads[i].shape != p.shape:
                raise ValueError(f"optimizer step: gradient {i} ({grads[i].shape}, {grads[i].dtype}) does "
                                 f"not match its parameter ({p.shape}, {p.dtype}) in shape, dtype and layout")
            wholes = [a.reshape(-1, order="A") for a in group]          # memory order: views
            for start in range(0, p.size, per):
                views = tuple(w[start:start + per] for w in wholes)
                pieces.append((views[0].size, i % 2 == 0, views, tuple(v.ctypes.data for v in views)))
        return pieces


class _Level1Step:
    """SGD's step with momentum and/or L2 weight decay as BLAS level-1 calls (mbtrain.gemm.level1).

    With g = dW and d = lambda on weights, 0 on biases (coupled decay, as _coupled_l2), per piece
    of each array (_ArrayPieces):

        v = mu v + g              axpby
        v += d W                  axpy             v = mu v + (g + d W)
        W = (1 - lr d) W - lr g   axpby (axpy for d = 0), before W changes
        W -= lr mu v              axpy             W -= lr (g + d W + mu v)    Nesterov
    or  W -= lr v                 axpy             without Nesterov
    or  W = (1 - lr d) W - lr g   axpby            without momentum

    numpy needs a call per product and per sum, and a scratch array: Nesterov with decay over
    mnist.yaml's 407,056 parameters took 786 us (850 on two BLAS threads) against 365 (407) so
    (/work/notes/s11/optproto.py). The gradients are read, never written. Each entry is computed
    on its own, so the result does not depend on the number of threads.
    """

    def __init__(self, params: list[np.ndarray], velocity: list[np.ndarray], routines: gemm.Level1):
        self.blas = routines
        self.pieces = _ArrayPieces(params, *([velocity] if velocity else []))

    def __call__(self, grads: list[np.ndarray], lr: float, momentum: float, nesterov: bool,
                 weight_decay: float) -> None:
        axpy, axpby = self.blas
        for n, weight, _, (W, g, *v) in self.pieces(grads):
            d = weight_decay if weight else 0.0
            if momentum:
                v = v[0]
                axpby(n, 1.0, g, 1, momentum, v, 1)                 # v = mu v + g
                if d:
                    axpy(n, d, W, 1, v, 1)                          # v += d W
                if not nesterov:
                    axpy(n, -lr, v, 1, W, 1)                        # W -= lr v
                    continue
            if d:
                axpby(n, -lr, g, 1, 1.0 - lr * d, W, 1)             # W = (1 - lr d) W - lr g
            else:
                axpy(n, -lr, g, 1, W, 1)                            # W -= lr g
            if momentum:
                axpy(n, -lr * momentum, v, 1, W, 1)                 # W -= lr mu v (Nesterov)


class _Scratch:
    """Scratch arrays of a piece's size and their addresses: views of the first n entries."""

    def __init__(self, pieces: _ArrayPieces, dtype, count: int):
        self.arrays = [np.empty(pieces.largest(), dtype) for _ in range(count)]
        self.addresses = [a.ctypes.data for a in self.arrays]

    def __call__(self, n: int) -> list[np.ndarray]:
        return [a[:n] for a in self.arrays]


def _add_l2(params: list[np.ndarray], grads: list[np.ndarray], weight_decay: float,
            out: list[np.ndarray]) -> list[np.ndarray]:
    """out = grads with the coupled L2 term (_coupled_l2) of every array; returns out."""
    for i, (p, dp, g) in enumerate(zip(params, grads, out)):
        _coupled_l2(p, dp, i, weight_decay, out=g)
    return out


def _coupled_l2(p: np.ndarray, dp: np.ndarray, i: int, weight_decay: float,
                out: np.ndarray | None = None) -> np.ndarray:
    """g = dW + lambda W for weights (even i), dp itself for biases or lambda = 0 (into `out` when given).

    The one place the coupled L2 term is computed as an array (for a whole array or a weight piece):
    every optimizer and `mbtrain gradcheck` use it, but SGD's _Level1Step, which folds lambda W into
    its BLAS calls.
    """
    if not (weight_decay and i % 2 == 0):
        if out is None:
            return dp
        np.copyto(out, dp)
        return out
    g = np.multiply(p, weight_decay, out=out)
    g += dp                                                      # g = dW + lambda W
    return g


def _scratch(params: list[np.ndarray], count: int) -> list[np.ndarray]:
    """`count` scratch arrays of a piece's size (mbtrain.flat), so an update's intermediate results
    need no arrays of their own: the same operations in the same order (the same numbers), with
    nothing allocated per piece (RMSprop's step over keras-mnist-mlp's 669,706 parameters had
    allocated 126 arrays)."""
    return [np.empty(flat.largest_piece(params), params[0].dtype) for _ in range(count)]


def _over_rms(blas: gemm.Level1, n: int, g: np.ndarray, s: np.ndarray, S: int, decay: float, eps,
              numerator: np.ndarray, a: np.ndarray, A: int, b: np.ndarray) -> None:
    """a = numerator / (sqrt(s) + eps) after s = decay s + (1 - decay) g^2, over a piece of n entries
    (S, A: the addresses of s and a); b is scratch. The part of the step RMSprop and Adam share."""
    np.multiply(g, g, out=a)
    blas.axpby(n, 1.0 - decay, A, 1, decay, S, 1)                   # s = decay s + (1 - decay) g^2
    np.sqrt(s, out=b)
    b += eps
    np.divide(numerator, b, out=a)


class _Adaptive:
    """step() for RMSprop and Adam: BLAS's step where numpy's BLAS has axpby, else numpy's; then the
    state's flush (_Flush) by the count of steps."""

    def _setup(self, params: list[np.ndarray], state: list[list[np.ndarray]], level1: bool) -> bool:
        """The step count, the flush over `state`, and with level1 and numpy's BLAS axpby the BLAS
        step's pieces and three scratch arrays. True when the BLAS step is set up."""
        self.steps = 0                                           # steps taken (the flush's count)
        self._flush = _Flush(state)
        self.blas = gemm.level1(params[0].dtype) if level1 else None
        if self.blas is None:
            return False
        self._array_pieces = _ArrayPieces(params, *state)
        self._blas_scratch = _Scratch(self._array_pieces, params[0].dtype, 3)
        return True

    def step(self, grads: list[np.ndarray]) -> None:
        self.steps += 1
        if self.blas is not None:
            self._blas_step(grads)
        else:
            self._numpy_step(grads)
        self._flush(self.steps)


class RMSprop(_Adaptive):
    """RMSprop: each parameter's step divided by a running root-mean-square of its gradients."""

    name = "rmsprop"

    def __init__(self, params: list[np.ndarray], lr: float, decay: float = 0.9, eps: float = 1e-7,
                 weight_decay: float = 0.0, level1: bool = True):
        self.params, self.lr = params, lr
        self.decay, self.eps, self.weight_decay = decay, eps, weight_decay
        self.square_avg = flat.zeros_like(params)
        if self._setup(params, [self.square_avg], level1):
            return
        self._g = flat.zeros_like(params) if weight_decay else []
        self._pieces = _Pieces(params, self.square_avg)
        self._scratch = _scratch(params, 2)

    def _blas_step(self, grads: list[np.ndarray]) -> None:
        """The step with BLAS axpby/axpy for the sums (six passes a piece where numpy makes nine):
        g^2, s = (1 - rho) g^2 + rho s, sqrt(s) + eps, g / it, W -= lr times that."""
        axpy = self.blas.axpy
        eps = self.params[0].dtype.type(self.eps)
        A = self._blas_scratch.addresses[0]
        for n, weight, (w, g, s), (W, _, S) in self._array_pieces(grads):
            a, b, c = self._blas_scratch(n)
            if weight and self.weight_decay:
                g = _coupled_l2(w, g, 0, self.weight_decay, out=c)   # g + lambda W (a weight piece)
            _over_rms(self.blas, n, g, s, S, self.decay, eps, g, a, A, b)   # g / (sqrt(s) + eps)
            axpy(n, -self.lr, A, 1, W, 1)                          # W -= lr g / (sqrt(s) + eps)

    def _numpy_step(self, grads: list[np.ndarray]) -> None:
        f = self.params[0].dtype.type
        lr, rho, eps = f(self.lr), f(self.decay), f(self.eps)
        if self.weight_decay:
            grads = _add_l2(self.params, grads, self.weight_decay, self._g)
        for p, g, s in self._pieces(grads):
            a, b = (x[:p.size] for x in self._scratch)
            s *= rho
            s += np.multiply(np.multiply(g, g, out=a), 1 - rho, out=a)      # s = rho s + (1 - rho) g^2
            np.sqrt(s, out=b)
            b += eps
            p -= np.divide(np.multiply(g, lr, out=a), b, out=a)           # p -= lr g / (sqrt(s) + eps)

    def state(self) -> dict[str, np.ndarray]:
        return {f"square_avg{i}": s for i, s in enumerate(self.square_avg)}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        for i, s in enumerate(self.square_avg):
            s[...] = arrays[f"square_avg{i}"]


class Adam(_Adaptive):
    """Adam: momentum (m) and RMS scaling (v) with bias correction; coupled L2 like torch.optim.Adam."""

    name = "adam"
    decoupled = False

    def __init__(self, params: list[np.ndarray], lr: float, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0, level1: bool = True):
        self.params, self.lr = params, lr
        self.beta1, self.beta2, self.eps, self.weight_decay = beta1, beta2, eps, weight_decay
        self.m = flat.zeros_like(params)
        self.v = flat.zeros_like(params)
        self.t = 0                                             # steps taken, for bias correction
        if self._setup(params, [self.m, self.v], level1):
            return
        self._g = flat.zeros_like(params) if weight_decay and not self.decoupled else []
        self._pieces = _Pieces(params, self.m, self.v)
        self._scratch = _scratch(params, 2)

    def _blas_step(self, grads: list[np.ndarray]) -> None:
        """The step with BLAS axpby/axpy for the sums (seven passes a piece where numpy makes 14),
        with the bias corrections outside the passes, as torch.optim.Adam does:

            m = (1 - b1) g + b1 m;  v = (1 - b2) g^2 + b2 v                         axpby, axpby
            W -= lr sqrt(c2) / c1 * m / (sqrt(v) + eps sqrt(c2))                    axpy (axpby with AdamW's decay)

        which is lr (m / c1) / (sqrt(v / c2) + eps), c = 1 - b^t, up to rounding.
        """
        axpy, axpby = self.blas
        f = self.params[0].dtype.type
        t = self.t
        root2 = math.sqrt(1 - self.beta2 ** t)
        step = self.lr * root2 / (1 - self.beta1 ** t)
        eps = f(self.eps * root2)
        shrink = 1.0 - self.lr * self.weight_decay              # AdamW: W -= lr lambda W
        A = self._blas_scratch.addresses[0]
        for n, weight, (w, g, m, v), (W, G, M, V) in self._array_pieces(grads):
            a, b, c = self._blas_scratch(n)
            if weight and self.weight_decay and not self.decoupled:
                g = _coupled_l2(w, g, 0, self.weight_decay, out=c)   # g + lambda W (a weight piece)
                G = self._blas_scratch.addresses[2]
            axpby(n, 1.0 - self.beta1, G, 1, self.beta1, M, 1)      # m = b1 m + (1 - b1) g
            _over_rms(self.blas, n, g, v, V, self.beta2, eps, m, a, A, b)   # m / (sqrt(v) + eps')
            if weight and self.weight_decay and self.decoupled:
                axpby(n, -step, A, 1, shrink, W, 1)                 # W = (1 - lr lambda) W - step m / (...)
            else:
                axpy(n, -step, A, 1, W, 1)                          # W -= step m / (sqrt(v) + eps')

    def step(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        super().step(grads)

    def _numpy_step(self, grads: list[np.ndarray]) -> None:
        f = self.params[0].dtype.type
        b1, b2, eps, lr = f(self.beta1), f(self.beta2), f(self.eps), f(self.lr)
        # the corrections in float64 then cast once, so 1 - b^t is not rounded to float32 first
        correct1, correct2 = f(1 - self.beta1 ** self.t), f(1 - self.beta2 ** self.t)
        if self.weight_decay and self.decoupled:
            for W in self.params[0::2]:
                W *= f(1 - self.lr * self.weight_decay)          # W -= lr lambda W
        elif self.weight_decay:
            grads = _add_l2(self.params, grads, self.weight_decay, self._g)
        for p, g, m, v in self._pieces(grads):
            a, b = (x[:p.size] for x in self._scratch)
            m *= b1
            m += np.multiply(g, 1 - b1, out=a)                 # m = b1 m + (1 - b1) g
            v *= b2
            v += np.multiply(np.multiply(g, g, out=a), 1 - b2, out=a)      # v = b2 v + (1 - b2) g^2
            np.sqrt(np.divide(v, correct2, out=b), out=b)
            b += eps
            p -= np.divide(np.multiply(np.divide(m, correct1, out=a), lr, out=a), b, out=a)
            #    lr (m / correct1) / (sqrt(v / correct2) + eps)

    def state(self) -> dict[str, np.ndarray]:
        arrays = {"t": np.array(self.t, dtype=np.int64)}
        for i, (m, v) in enumerate(zip(self.m, self.v)):
            arrays[f"m{i}"], arrays[f"v{i}"] = m, v
        return arrays

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.t = int(arrays["t"])
        for i, (m, v) in enumerate(zip(self.m, self.v)):
            m[...], v[...] = arrays[f"m{i}"], arrays[f"v{i}"]


class AdamW(Adam):
    """Adam with decoupled weight decay: W shrinks by lr * lambda * W, outside the adaptive step."""

    name = "adamw"
    decoupled = True


OPTIMIZERS = ("sgd", "rmsprop", "adam", "adamw")


def effective_weight_decay(cfg_train, n_train: int | None) -> float:
    """train.weight_decay, divided by the training-set size n under weight_decay_scaling = train_size.

    Nielsen's C = C0 + lambda/(2n) sum W^2 has gradient dW + (lambda/n) W: with scaling
    train_size, his lambda = 5.0 on 50,000 images is the coupled decay 5.0/50000 = 1e-4.
    """
    wd = cfg_train.weight_decay
    if getattr(cfg_train, "weight_decay_scaling", "none") == "train_size" and wd:
        if not n_train:
            raise ValueError("train.weight_decay_scaling = train_size needs the training-set size")
        wd = wd / n_train
    return wd


def make(cfg_train, params: list[np.ndarray], n_train: int | None = None):
    """The optimizer named by train.optimizer over `params`."""
    t = cfg_train
    wd = effective_weight_decay(t, n_train)
    name = getattr(t, "optimizer", "sgd")
    if name == "sgd":
        return SGD(params, t.lr, t.momentum, t.nesterov, wd, blas_axpy=getattr(t, "threads", 0) == 1)
    if name == "rmsprop":
        return RMSprop(params, t.lr, t.rmsprop_decay, t.epsilon, wd)
    if name == "adam":
        return Adam(params, t.lr, t.beta1, t.beta2, t.epsilon, wd)
    if name == "adamw":
        return AdamW(params, t.lr, t.beta1, t.beta2, t.epsilon, wd)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
