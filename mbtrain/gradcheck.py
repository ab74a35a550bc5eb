"""Gradient check: the minibatch gradient three ways, layer by layer, in float64.

For every weight matrix W (m, n) and bias b (m,) of a network, on K samples:

    vectorized  dW = dZ.T @ A_prev, db = dZ.sum(0): the model's own backward(), as training runs it
                (plus the L2 term g = dW + weight_decay W, taken from the optimizer's own code)
    loop        dW = (1/K) sum_k delta_k a_k^T, db = (1/K) sum_k delta_k: the textbook per-sample
                loop, written here independently of model.py (and of `mbtrain bench`'s timed loop)
    numerical   dC/dw ~ (C(w + h) - C(w - h)) / 2h, C the model's mean loss over the K samples
                plus weight_decay/2 * sum(W**2); every entry of small arrays, a seeded random
                subset of big ones

With dropout (model.dropout > 0) all three use one fixed set of inverted-dropout masks, those of
the first training step, so the loss is an ordinary function of the weights.

It reports max |a - b| and the relative error max |a - b| / max(|a|, |b|) of each pair, with
PASS/FAIL against TOLERANCES. docs/backprop.md derives why the three agree.

    mbtrain gradcheck configs/mnist.yaml --samples 8
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mbtrain import blas, dropout, optim
from mbtrain.errors import MbtrainError
from mbtrain.model import MLP

# (relative, absolute) tolerance of each comparison; a pair passes when
# max|a - b| <= rel * max(|a|, |b|)  or  max|a - b| <= abs.
# vectorized vs loop is the same algebra summed in a different order: only float64 rounding
# (~K * 1e-16) separates them. Central differences with h = 1e-5 are off by ~h^2 |C'''| (truncation)
# plus ~1e-16 |C| / h (rounding), about 1e-10 here, so 1e-6 leaves room and still catches a
# missing 1/K, a wrong sigma' or a dropped L2 term, each of which is off by far more.
FD_STEP = 1e-5
TOLERANCES = {
    "vectorized_vs_loop": (1e-10, 1e-13),
    "vectorized_vs_numerical": (1e-6, 1e-9),
    "loop_vs_numerical": (1e-6, 1e-9),
}
FD_ENTRIES = 64          # arrays with more entries than this get a random subset of this size


@dataclass
class Comparison:
    max_abs: float
    max_rel: float
    entries: int
    rtol: float
    atol: float

    @property
    def passed(self) -> bool:
        return self.max_abs <= self.atol or self.max_rel <= self.rtol


@dataclass
class ParamCheck:
    """The three comparisons of one parameter array, e.g. layer 1's W."""
    layer: int                       # 1..L, the layer the array feeds (l in w^l_ij)
    name: str                        # "W" or "b"
    shape: tuple
    comparisons: dict[str, Comparison]
    kinks_skipped: int = 0           # finite-difference entries skipped: a ReLU kink lay within +-h

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons.values())


@dataclass
class Report:
    params: list[ParamCheck]
    samples: int
    loss: float
    description: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.params)

    def to_dict(self) -> dict:
        return {**self.description, "samples": self.samples, "dtype": "float64", "loss": self.loss,
                "fd_step": FD_STEP, "passed": self.passed,
                "tolerances": {k: {"rel": r, "abs": a} for k, (r, a) in TOLERANCES.items()},
                "params": [{"layer": p.layer, "name": p.name, "shape": list(p.shape), "passed": p.passed,
                            "kinks_skipped": p.kinks_skipped,
                            "comparisons": {k: {"max_abs": c.max_abs, "max_rel": c.max_rel,
                                                "entries": c.entries, "passed": c.passed}
                                            for k, c in p.comparisons.items()}}
                           for p in self.params]}


# ---------------------------------------------------------------- the three gradients

def vectorized_gradients(model: MLP, X: np.ndarray, Y: np.ndarray, weight_decay: float,
                         optimizer: str = "sgd", masks=None) -> list[np.ndarray]:
    """The gradient training descends: model.forward + loss_and_backward, then the optimizer's L2.

    The L2 term lives in the optimizer (g = dW + weight_decay W), so it is taken from the
    optimizer's own code: for sgd, read off one plain step with lr = 1 on a copy of the
    parameters (g = p - p_after); rmsprop and adam add it with optim._coupled_l2.
    """
    model.forward(X, masks)                                   # (K, m_L)
    model.loss_and_backward(Y)
    grads = [g.copy() for g in model.grads]
    if not weight_decay:
        return grads
    if optimizer == "sgd":
        probe = [p.copy() for p in model.params]
        optim.SGD(probe, lr=1.0, weight_decay=weight_decay).step(grads)
        return [p - q for p, q in zip(model.params, probe)]
    return [optim._coupled_l2(p, g, i, weight_decay) for i, (p, g) in enumerate(zip(model.params, grads))]


def loop_gradients(model: MLP, X: np.ndarray, Y: np.ndarray, weight_decay: float,
                   masks=None) -> list[np.ndarray]:
    """(1/K) sum_k of each sample's gradient, one sample at a time, as column vectors.

    masks: None, or one (K, m) inverted-dropout mask per hidden layer; the next layer sees
    a^l * mask_k, and the error passed back is multiplied by the same mask.

    The output error delta_k of sample k is the loss's own delta on a batch of one (its cost C_k);
    everything after it (W^T delta * sigma'(z), the outer products, the sum, the 1/K) is redone
    here without model.py. Finite differences check the deltas themselves.
    """
    act, out = model.act, model.out
    params = model.params
    L, K = len(params) // 2, len(X)
    grads = [np.zeros_like(p) for p in params]
    for k in range(K):
        a, zs, activations = X[k], [], [X[k]]
        for l in range(L):                                    # forward, one column at a time
            z = params[2 * l] @ a + params[2 * l + 1]         # z^l = W^l a^{l-1} + b^l   (m,)
            zs.append(z)
            if l < L - 1:
                a = act.forward(z)                            # a^l = sigma(z^l)
                if masks is not None:
                    a = a * masks[l][k]                       # what layer l+1 sees
                activations.append(a)
        _, delta = out.loss_and_delta(zs[-1][None, :], Y[k][None, :])
        delta = delta[0]                                      # dC_k/dz^L  (m_L,)
        for l in range(L - 1, -1, -1):
            grads[2 * l] += np.outer(delta, activations[l]) / K       # delta a^T  (m, n)
            grads[2 * l + 1] += delta / K
            if l > 0:                                         # delta^{l-1} = (W^T delta) * sigma'(z)
                sigma_prime = act.derivative(zs[l - 1], act.forward(zs[l - 1]), None)
                keep = masks[l - 1][k] if masks is not None else 1.0
                delta = (params[2 * l].T @ delta) * keep * sigma_prime
    for l in range(L):
        grads[2 * l] += weight_decay * params[2 * l]          # d/dW of weight_decay/2 * sum(W**2)
    return grads


def mean_loss(model: MLP, X: np.ndarray, Y: np.ndarray, weight_decay: float, masks=None) -> float:
    """C = the model's mean loss over the K samples + weight_decay/2 * sum of squared weights."""
    Z = model.forward(X, masks)
    loss, _ = model.out.loss_and_delta(Z, Y)
    return loss + 0.5 * weight_decay * sum(float((W * W).sum()) for W in model.weights)


def hidden_signs(model: MLP) -> list[np.ndarray]:
    """Z > 0 of every hidden layer in the last forward(): where it differs between w - h and
    w + h, a kink (ReLU's at 0) lies in between."""
    return [Z > 0 for Z in model.Z[:-1]]


def numerical_gradient(model: MLP, X, Y, weight_decay: float, index: int, entries: np.ndarray,
                       masks=None):
    """Central differences of mean_loss at flat `entries` of params[index]: (values, kink mask)."""
    p = model.params[index]                                   # perturbed in place, whatever its layout
    values = np.empty(len(entries))
    kinks = np.zeros(len(entries), bool)
    for e, entry in enumerate(entries):
        i = np.unravel_index(entry, p.shape)                  # row-major numbering, as reshape(-1)'s
        saved = p[i]
        p[i] = saved + FD_STEP
        plus, signs_plus = mean_loss(model, X, Y, weight_decay, masks), hidden_signs(model)
        p[i] = saved - FD_STEP
        minus, signs_minus = mean_loss(model, X, Y, weight_decay, masks), hidden_signs(model)
        p[i] = saved
        values[e] = (plus - minus) / (2 * FD_STEP)
        kinks[e] = any((s != t).any() for s, t in zip(signs_plus, signs_minus))
    return values, kinks


# ---------------------------------------------------------------- comparing

def compare(a: np.ndarray, b: np.ndarray, kind: str) -> Comparison:
    """Max absolute and relative difference of two arrays of the same shape."""
    rtol, atol = TOLERANCES[kind]
    if a.size == 0:
        return Comparison(0.0, 0.0, 0, rtol, atol)
    max_abs = float(np.abs(a - b).max())
    scale = float(max(np.abs(a).max(), np.abs(b).max()))
    max_rel = max_abs / scale if scale > 0 else 0.0
    return Comparison(max_abs, max_rel, int(a.size), rtol, atol)


def check_model(model: MLP, X: np.ndarray, Y: np.ndarray, weight_decay: float = 0.0,
                rng: np.random.Generator | None = None, fd_entries: int = FD_ENTRIES,
                optimizer: str = "sgd", masks: list[np.ndarray] | None = None) -> Report:
    """Compare the three gradients of a float64 `model` on X (K, n_0), Y (K, m_L).

    weight_decay is the coupled L2 coefficient the optimizer (sgd, rmsprop, adam) adds;
    masks, if given, the fixed dropout masks, one (K, m) per hidden layer.
    """
    if model.dtype != np.float64:
        raise MbtrainError(f"gradcheck needs a float64 model, got {model.dtype}")
    rng = rng or np.random.default_rng(0)
    vec = vectorized_gradients(model, X, Y, weight_decay, optimizer, masks)
    loop = loop_gradients(model, X, Y, weight_decay, masks)
    loss = mean_loss(model, X, Y, weight_decay, masks)
    checks = []
    for index, p in enumerate(model.params):
        entries = np.arange(p.size) if p.size <= fd_entries else \
            np.sort(rng.choice(p.size, fd_entries, replace=False))
        numerical, kinks = numerical_gradient(model, X, Y, weight_decay, index, entries, masks)
        keep = entries[~kinks]
        comparisons = {
            "vectorized_vs_loop": compare(vec[index], loop[index], "vectorized_vs_loop"),
            "vectorized_vs_numerical": compare(vec[index].reshape(-1)[keep], numerical[~kinks],
                                               "vectorized_vs_numerical"),
            "loop_vs_numerical": compare(loop[index].reshape(-1)[keep], numerical[~kinks],
                                         "loop_vs_numerical"),
        }
        checks.append(ParamCheck(index // 2 + 1, "Wb"[index % 2], p.shape, comparisons, int(kinks.sum())))
    return Report(checks, len(X), loss)


# ---------------------------------------------------------------- from a config

def gradcheck_rng(seed: int) -> np.random.Generator:
    """gradcheck's own stream of the run seed (init uses spawn key 0, shuffling 1): samples, subsets."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(8,)))


def take_samples(cfg, samples: int, rng: np.random.Generator, normalization=None):
    """K random rows of the training split as training sees them (split, data.normalize), in float64.

    Returns X (K, n_0), Y (K, m_L), the source's name and the training split's size.
    normalization: a checkpoint's stored statistics; by default fitted as `mbtrain fit` does.
    """
    from mbtrain.train import load_splits

    train, _, _ = load_splits(cfg, normalization)
    if samples > len(train):
        raise MbtrainError(f"--samples {samples}: {train.name} has only {len(train)} training samples "
                           f"(after data.validation)")
    rows = train.start + np.sort(rng.choice(len(train), samples, replace=False))
    X = np.empty((samples, train.features), np.float64)
    Y = np.empty((samples, cfg.model.layers[-1]), np.float64)
    train.gather(rows, X, Y)
    return X, Y, train.name, len(train)


def loss_weight_decay(cfg_train, n_train: int) -> tuple[float, str]:
    """(the L2 coefficient that is part of the loss, how it was found) for this config.

    Coupled L2 (sgd, rmsprop, adam) adds weight_decay/2 * sum(W**2) to the loss, divided by the
    training-set size under weight_decay_scaling = train_size, exactly as training computes it.
    AdamW's decoupled decay shrinks W outside the gradient: it is no term of the loss.
    """
    wd = optim.effective_weight_decay(cfg_train, n_train)
    scaling = getattr(cfg_train, "weight_decay_scaling", "none")
    how = f"{cfg_train.weight_decay:g}" + (f"/{n_train} (train_size scaling)" if scaling == "train_size" and wd else "")
    if getattr(cfg_train, "optimizer", "sgd") == "adamw" and wd:
        return 0.0, how + ", decoupled by adamw: not part of the loss, not checked"
    return wd, how


def run(cfg, samples: int = 8, params: list[np.ndarray] | None = None,
        fd_entries: int = FD_ENTRIES, normalization=None) -> Report:
    """Gradient check of the configured network (or `params` and `normalization` of a checkpoint)."""
    from mbtrain.train import build_model

    if samples < 1:
        raise MbtrainError(f"--samples {samples}: expected at least 1")
    if fd_entries < 1:
        raise MbtrainError(f"--fd-entries {fd_entries}: expected at least 1")
    params = params if params is not None else build_model(cfg).params
    m = cfg.model
    model = MLP([p.astype(np.float64) for p in params], m.activation, m.output)
    rng = gradcheck_rng(cfg.seed)
    X, Y, source, n_train = take_samples(cfg, samples, rng, normalization)
    weight_decay, how = loss_weight_decay(cfg.train, n_train)
    optimizer = getattr(cfg.train, "optimizer", "sgd")
    rate = getattr(m, "dropout", 0.0)
    # the masks of the first training step (epoch 0, step 0), fixed for all three gradients
    masks = dropout.masks(cfg.seed, 0, 0, samples, m.layers[1:-1], rate, np.float64) \
        if rate and len(m.layers) > 2 else None
    # products of K rows gain nothing from BLAS threads, and lose much on a busy machine
    with blas.limit(cfg.train.threads or 1):
        report = check_model(model, X, Y, weight_decay, rng, fd_entries, optimizer, masks)
    report.description = {"layers": list(m.layers), "activation": m.activation, "output": m.output,
                          "optimizer": optimizer, "weight_decay": weight_decay, "weight_decay_from": how,
                          "dropout": rate, "dropout_kept": None if masks is None else
                          float(np.mean(np.concatenate([(k != 0).ravel() for k in masks]))),
                          "data": source}
    return report


NAMES = {"vectorized_vs_loop": "vectorized vs loop", "vectorized_vs_numerical": "vectorized vs numerical",
         "loop_vs_numerical": "loop vs numerical"}


def format_report(report: Report) -> str:
    """The human-readable table: one line per (layer, array, comparison), then the verdict."""
    d = report.description
    lines = []
    if d:
        lines.append(f"network  {'-'.join(map(str, d['layers']))} {d['activation']}, {d['output']}, "
                     f"{d['optimizer']}, L2 weight_decay {d['weight_decay_from']}")
        lines.append(f"data     {report.samples} samples of {d['data']}")
        if d.get("dropout_kept") is not None:
            lines.append(f"dropout  {d['dropout']:g} on hidden layers, one fixed mask (drawn as for the "
                         f"first training step): {d['dropout_kept']:.0%} of units kept, scaled by 1/{1 - d['dropout']:g}")
    lines.append(f"checking float64 gradients of the mean loss {report.loss:.6g}; numerical: central "
                 f"differences, h = {FD_STEP:g}")
    head = f"{'layer':>5}  {'array':<5}  {'shape':<11}  {'comparison':<23}  {'entries':>7}  " \
           f"{'max_abs':>8}  {'max_rel':>8}  {'rel_tol':>7}  result"
    lines.append(head)
    for p in report.params:
        for i, (kind, c) in enumerate(p.comparisons.items()):
            left = f"{p.layer:>5}  {p.name:<5}  {str(p.shape):<11}" if i == 0 else " " * 25
            lines.append(f"{left}  {NAMES[kind]:<23}  {c.entries:>7}  {c.max_abs:8.1e}  {c.max_rel:8.1e}  "
                         f"{c.rtol:7.0e}  {'PASS' if c.passed else 'FAIL'}")
    skipped = sum(p.kinks_skipped for p in report.params)
    if skipped:
        lines.append(f"note: {skipped} numerical entries skipped: a kink (ReLU at 0) lay within +-h")
    failed = [f"layer {p.layer} {p.name}" for p in report.params if not p.passed]
    total = len(report.params)
    lines.append(f"FAIL: {', '.join(failed)} ({len(failed)} of {total} arrays)" if failed
                 else f"PASS: all {total} arrays agree within tolerance")
    return "\n".join(lines)
