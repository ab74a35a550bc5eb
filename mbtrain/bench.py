"""Benchmark of one training step: vectorized, per-sample (textbook), and the GEMM-only bound.

In one run, on the config's network, batch size, dtype and optimizer, and on batches
gathered from its training data:
  vectorized  - mbtrain's step: gather, forward, loss, backward, update (and with dropout the
                step's masks, drawn as fit draws them);
  per_sample  - the same step the textbook way: a loop over the K samples accumulating
                delta_k a_k^T (the timed yardstick; gradcheck has its own, independent loop);
  gemm_bound  - only the step's matrix products (Z = A_prev @ W.T, dA_prev = dZ @ W, and
                dW = dZ.T @ A_prev, or W -= lr dZ.T @ A_prev when the step fuses plain SGD
                into them, mbtrain.step; same shapes, transposes, dtype), timed alone.
Implementations alternate inside each repeat, vectorized always between the other two; each
rate is the median over repeats, and each ratio the median over repeats of that repeat's own
ratio: its two timings ran back to back, so a slow stretch of a shared machine slows both
sides of it alike.

    mbtrain bench configs/mnist.yaml --set model.layers=[784,100,10] --set train.batch_size=64
"""

from __future__ import annotations

import resource
import statistics
import sys
import time

import numpy as np

from mbtrain import blas, data, dropout, flat, gemm, guard, loadertime, optim, step
from mbtrain.config import Config
from mbtrain.errors import DataError
from mbtrain.model import MLP, bias_in_product, weight_gradient, weight_order


def per_sample_gradients(model: MLP, X: np.ndarray, Y: np.ndarray,
                         masks: list[np.ndarray] | None = None) -> tuple[float, list[np.ndarray]]:
    """Mean loss and gradients for the batch X (K, n_0), Y (K, m_L), one sample at a time.

    For each sample: a^0 = x, z^l = W^l a^(l-1) + b^l, a^l = sigma(z^l); the output error
    delta^L from the loss; delta^(l-1) = (W^l)^T delta^l * sigma'(z^(l-1));
    dW^l += delta^l (a^(l-1))^T, db^l += delta^l. Finally divide by K (the loss is a mean).
    masks: None, or the step's inverted-dropout masks, one (K, m) per hidden layer (mbtrain.dropout):
    layer l+1 then sees a^l * mask_k, and delta^l is multiplied by the same mask.
    Row-major throughout, as the textbook writes W (the model may keep a layer column-major,
    mbtrain.model.weight_order, which would slow this loop's matrix-vector products).
    """
    K, L = X.shape[0], len(model.weights)
    Ws, bs = [np.ascontiguousarray(W) for W in model.weights], model.biases
    grads = [np.zeros(p.shape, p.dtype) for p in model.params]
    total_loss = 0.0
    for k in range(K):
        # forward one sample
        a_list, z_list, sigma_list = [X[k]], [], []
        for l in range(L):
            z = Ws[l] @ a_list[-1] + bs[l]                            # (m,)
            z_list.append(z)
            if l < L - 1:
                a = model.act.forward(z)                              # (m,)
                sigma_list.append(a)
                a_list.append(a * masks[l][k] if masks is not None else a)   # what layer l+1 sees
        # the output error of this sample: the fused loss on a batch of one
        loss, delta = model.out.loss_and_delta(z_list[-1][None, :], Y[k][None, :])
        total_loss += loss
        delta = delta[0]                                              # (m_L,)
        # backward one sample
        for l in range(L - 1, -1, -1):
            grads[2 * l] += np.outer(delta, a_list[l])               # delta^l (a^(l-1))^T  (m, n)
            grads[2 * l + 1] += delta
            if l > 0:
                delta = (Ws[l].T @ delta) * model.act.derivative(z_list[l - 1], sigma_list[l - 1])
                if masks is not None:
                    delta *= masks[l - 1][k]
    for g in grads:
        g /= K
    return total_loss / K, grads


def gradient_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest |a - b| relative to the largest |b|, over every gradient array."""
    return max(float(np.abs(x - y).max()) / max(float(np.abs(y).max()), 1e-30) for x, y in zip(a, b))


def flops_per_step(layers: list[int], K: int) -> int:
    """2 K m n per product; three products per layer except the input layer (no dA_prev)."""
    return sum(2 * K * m * n * (2 if l == 0 else 3)
               for l, (n, m) in enumerate(zip(layers[:-1], layers[1:])))


class _Gemms:
    """Exactly the step's matrix products, on buffers laid out and shared between layers as the
    model's are (layer l reads layer l-1's activations; its error product writes layer l-1's dZ).

    fused: the step folds plain SGD into the weight-gradient products (mbtrain.step), so those
    are timed as the step runs them, W = W - lr dZ^T A_prev through a gemm.Product, into the
    same W the forward product reads. Likewise a layer whose forward product takes its bias
    (mbtrain.model.bias_in_product) is timed as that call, Z = Z + A_prev @ W.T (without the
    fill of Z with b, which is not a product). Like the step's, those calls are made ready once:
    timed through gemm.update, the bound of setting A had counted ~4 % of its time in the
    checks around its two calls (/work/notes/s12/boundwrap.py).
    """

    def __init__(self, layers: list[int], K: int, dtype, rng: np.random.Generator, fused: bool = False):
        fill = lambda *shape: flat.pack([rng.standard_normal(shape)], dtype)[0]   # aligned, as the step's
        self.fused = fused
        self.X = fill(K, layers[0])
        weights = lambda: [flat.pack([rng.standard_normal((m, n))], dtype, [weight_order(l, m)])[0]
                           for l, (n, m) in enumerate(zip(layers[:-1], layers[1:]))]   # the model's layout
        self.W = weights()
        self.dW = weights() if not fused else []
        self.Z = [fill(K, m) for m in layers[1:]]
        self.A = [fill(K, m) for m in layers[1:-1]]           # hidden activations, the next layer's input
        self.dZ = [fill(K, m) for m in layers[1:]]
        self.inputs = inputs = [self.X] + self.A                # layer l's input A_prev
        # the gemm calls, their arguments made once, as the step makes them (mbtrain.model)
        self.forward = [gemm.Product("forward", Z, A, False, W, True) if bias_in_product(l, W.shape[0], dtype)
                        else None for l, (Z, A, W) in enumerate(zip(self.Z, inputs, self.W))]
        self.update = [gemm.Product("update", W, dZ, True, A, False) if fused else None
                       for W, dZ, A in zip(self.W, self.dZ, inputs)]

    def run(self) -> None:
        inputs = self.inputs
        for l, W in enumerate(self.W):
            if self.forward[l] is not None:
                self.forward[l](1.0, 1.0)                           # forward   Z += A_prev @ W.T  (K, m)
            else:
                gemm.matmul(inputs[l], W.T, out=self.Z[l])          # forward   Z = A_prev @ W.T   (K, m)
        for l in range(len(self.W) - 1, 0, -1):
            gemm.matmul(self.dZ[l], self.W[l], out=self.dZ[l - 1])  # errors    dZ @ W             (K, n)
        for l, W in enumerate(self.W):
            if self.fused:                                          # W -= lr dZ.T @ A_prev
                self.update[l](-1e-4, 1.0)
            else:
                weight_gradient(self.dZ[l], inputs[l], self.dW[l])  # dW = dZ.T @ A_prev           (m, n)


class Trainer:
    """A model, its optimizer and an endless stream of training batches; step() is one training step.

    With model.dropout, each step draws its inverted-dropout masks as fit does (mbtrain.dropout:
    a fresh generator per (seed, epoch, step)), and both implementations train through them.
    """

    def __init__(self, cfg: Config, train_set: data.Dataset, per_sample: bool, prefetch: str | None = None):
        from mbtrain.train import build_model, make_batches
        t = cfg.train
        self.model = build_model(cfg)
        self.opt = optim.make(t, self.model.params, n_train=len(train_set))
        self.clip_norm = t.clip_norm
        self.per_sample = per_sample
        self.train_step = step.TrainStep(self.model, self.opt, t.clip_norm, t.fused_update,
                                         input_bound=train_set.entry_bound())   # as fit makes it
        self.batches = make_batches(cfg, train_set, prefetch, drop_last=True)   # as fit makes them, K rows each
        self.stream = data.endless(self.batches)
        self._masks = dropout.Masks(cfg.seed, self.model.layers[1:-1], cfg.model.dropout, self.model.dtype)
        self.steps = 0

    def close(self) -> None:
        """Stop the batch stream and its prefetch worker (thread or process)."""
        self.stream.close()
        self.batches.close()

    def masks(self, K: int) -> list[np.ndarray] | None:
        """This step's dropout masks, as fit draws them (None without dropout)."""
        self.steps += 1
        return self._masks(0, self.steps - 1, K)

    def step(self) -> None:
        X, Y = next(self.stream)
        masks = self.masks(len(X))
        if not self.per_sample:
            self.train_step(X, Y, masks)                         # as fit runs it
            return
        loss, grads = per_sample_gradients(self.model, X, Y, masks)
        for g, row_major in zip(self.model.grads, grads):       # into the model's layout, which
            g[...] = row_major                                   # the optimizer streams over
        guard.check_step(loss, self.model.grads, self.clip_norm)  # as fit does, before the update
        self.opt.step(self.model.grads)


# pause after each timed block: the vectorized step's prefetch worker (when on) goes on filling
# its ring after the block and would otherwise run during the next implementation's timing
SETTLE_SECONDS = 0.02


def _timed(fn, steps: int) -> float:
    """Seconds per call of fn, over `steps` calls."""
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def run(cfg: Config, steps: int | None = None, repeats: int = 9) -> dict:
    """Measure the three implementations for cfg's network; returns the result as a dict."""
    with blas.limit(cfg.train.threads, cfg.train.blas):
        return _run(cfg, steps, repeats)


def _run(cfg: Config, steps: int | None, repeats: int) -> dict:
    t, layers, K = cfg.train, cfg.model.layers, cfg.train.batch_size
    from mbtrain.train import load_splits
    train_set = load_splits(cfg)[0]                 # the training split, normalized as fit does
    if len(train_set) < K:
        raise DataError(f"{train_set.name}: {len(train_set)} training samples make no batch of "
                        f"train.batch_size = {K}")
    vectorized, per_sample = Trainer(cfg, train_set, False), Trainer(cfg, train_set, True)
    X, Y = next(vectorized.stream)
    check = gradient_check(vectorized.model, X, Y, t.dtype, vectorized.masks(len(X)))
    gemms = _Gemms(layers, K, t.dtype, np.random.default_rng(cfg.seed), vectorized.train_step.fused)
    steps = steps or _calibrate(vectorized.step)
    per_sample_steps = max(1, steps // 10)
    # vectorized runs between the other two, so each of its ratios pairs adjacent timings
    runs = {"per_sample": (per_sample.step, per_sample_steps), "vectorized": (vectorized.step, steps),
            "gemm_bound": (gemms.run, steps)}
    times = {name: [] for name in runs}
    for fn, _ in runs.values():                                            # warm-up
        fn()
    for r in range(repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):     # alternate the order (around vectorized)
            fn, n = runs[name]
            times[name].append(_timed(fn, n))
            time.sleep(SETTLE_SECONDS)      # a prefetch worker refills its ring outside any timing
    for trainer in (vectorized, per_sample):
        trainer.close()
    seconds = {name: statistics.median(v) for name, v in times.items()}
    rate = {name: K / s for name, s in seconds.items()}
    ratios = lambda slow, fast: [a / b for a, b in zip(times[slow], times[fast])]   # each repeat's own
    paired = lambda slow, fast: statistics.median(ratios(slow, fast))
    flops = flops_per_step(layers, K)
    timing = {name: {"samples_per_second": rate[name], "step_ms": 1e3 * seconds[name]} for name in runs}
    return {
        "network": layers, "activation": cfg.model.activation, "output": cfg.model.output,
        "dropout": cfg.model.dropout,
        "batch_size": K, "dtype": t.dtype, "optimizer": getattr(vectorized.opt, "name", "sgd"),
        "fused_update": vectorized.train_step.fused, "prefetch": vectorized.batches.prefetch,
        "prefetch_worker": vectorized.batches.worker,
        "steps": steps, "per_sample_steps": per_sample_steps, "repeats": repeats, **timing,
        "speedup_over_per_sample": paired("per_sample", "vectorized"),
        "vectorized_over_gemm_bound": paired("gemm_bound", "vectorized"),
        "repeat_ratios": {"speedup_over_per_sample": ratios("per_sample", "vectorized"),
                          "vectorized_over_gemm_bound": ratios("gemm_bound", "vectorized")},
        "repeat_step_ms": {name: [1e3 * s for s in v] for name, v in times.items()},
        **check, "flops_per_step": flops,
        "gflops": flops / seconds["vectorized"] / 1e9, "gemm_gflops": flops / seconds["gemm_bound"] / 1e9,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "blas": blas.info(), "threads": t.threads,
        "loader": loadertime.measure(cfg, train_set, steps, repeats),
    }


def gradient_check(model: MLP, X: np.ndarray, Y: np.ndarray, dtype,
                   masks: list[np.ndarray] | None = None) -> dict:
    """Vectorized and per-sample gradients of one batch on the same weights (and dropout masks), compared."""
    model.forward(X, masks)
    loss_vectorized = model.loss_and_backward(Y)
    loss_per_sample, grads = per_sample_gradients(model, X, Y, masks)
    difference = gradient_difference(model.grads, grads)
    tolerance = 1e-4 if np.dtype(dtype) == np.float32 else 1e-10
    return {"gradients_match": bool(difference <= tolerance), "gradient_max_relative_difference": difference,
            "gradient_tolerance": tolerance, "loss_vectorized": loss_vectorized,
            "loss_per_sample": loss_per_sample}


def _calibrate(step, seconds: float = 0.3, least: int = 10, most: int = 2000) -> int:
    """Steps per repeat so that one repeat of the vectorized step takes about `seconds`.

    The median of three short timings, so that one hiccup of a shared machine does not set it.
    Many short alternated repeats make the medians robust to the bursts of a shared machine.
    """
    per_step = statistics.median(_timed(step, 3) for _ in range(3))
    return int(min(most, max(least, seconds / max(per_step, 1e-9))))


def _spread(result: dict, name: str, spec: str) -> str:
    """" (repeats LOW-HIGH)": the range of a ratio's per-repeat values, when there are several."""
    values = result.get("repeat_ratios", {}).get(name, [])
    if len(values) < 2:
        return ""
    return f" (repeats {format(min(values), spec)}-{format(max(values), spec)})"


def table(result: dict) -> str:
    """The result as a readable table."""
    r = result
    lib = r["blas"]
    fused = " (update fused into the dW products)" if r["fused_update"] else ""
    fused += f", dropout {r['dropout']:g}" if r.get("dropout") else ""
    fused += f", batches prefetched by a {r.get('prefetch_worker') or 'thread'}" if r["prefetch"] else ""
    head = (f"network {'-'.join(map(str, r['network']))} {r['activation']}, batch {r['batch_size']}, "
            f"{r['dtype']}, {r['optimizer']}{fused}; {r['repeats']} repeats of {r['steps']} steps "
            f"({r['per_sample_steps']} per-sample); BLAS {lib['library']} {lib['version']}"
            + (f" ({lib['architecture']})" if lib["architecture"] else "")
            + f", {lib['threads']} thread{'' if lib['threads'] == 1 else 's'}"
            + (f" (products under {gemm.MKL_MIN_WORK:,} multiply-adds on numpy's)"
               if lib["library"] == "mkl" else ""))
    rows = [("", "samples/s", "step ms", "ratio")]
    rows.append(("vectorized", f"{r['vectorized']['samples_per_second']:,.0f}",
                 f"{r['vectorized']['step_ms']:.3f}", "1"))
    rows.append(("per_sample", f"{r['per_sample']['samples_per_second']:,.0f}",
                 f"{r['per_sample']['step_ms']:.3f}", f"vectorized is {r['speedup_over_per_sample']:.1f}x"
                 + _spread(r, "speedup_over_per_sample", ".1f")))
    rows.append(("gemm_bound", f"{r['gemm_bound']['samples_per_second']:,.0f}",
                 f"{r['gemm_bound']['step_ms']:.3f}",
                 f"vectorized / gemm_bound = {r['vectorized_over_gemm_bound']:.2f}"
                 + _spread(r, "vectorized_over_gemm_bound", ".2f")))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [head] + ["  ".join([row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2]), row[3]])
                      for row in rows]
    check = "match" if r["gradients_match"] else "DIFFER"
    lines.append(f"GFLOP/s {r['gflops']:.1f} (GEMMs alone {r['gemm_gflops']:.1f}); peak RSS "
                 f"{r['peak_rss_mb']:.0f} MB; gradients {check} (max relative difference "
                 f"{r['gradient_max_relative_difference']:.1e}, tolerance {r['gradient_tolerance']:.0e})")
    lines += loadertime.lines(r["loader"])
    return "\n".join(lines)
