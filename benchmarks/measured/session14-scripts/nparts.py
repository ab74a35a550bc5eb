"""Nielsen's step on one fixed batch, by part (median of rounds), and the bound's products alone."""
import sys, time, statistics
import numpy as np
from mbtrain import bench, blas, config, guard
from mbtrain.train import load_splits
cfg = config.load_config(sys.argv[1] if len(sys.argv) > 1 else "configs/nielsen-ch1.yaml")
N = 3000
with blas.limit(cfg.train.threads, cfg.train.blas):
    ts = load_splits(cfg)[0]
    tr = bench.Trainer(cfg, ts, False, prefetch="off")
    X, Y = next(tr.stream); X, Y = X.copy(), Y.copy()
    m, st = tr.model, tr.train_step
    g = bench._Gemms(cfg.model.layers, cfg.train.batch_size, cfg.train.dtype, np.random.default_rng(0), st.fused)
    parts = {
        "whole step": lambda: st(X, Y),
        "forward": lambda: m.forward(X),
        "loss_and_backward": lambda: m.loss_and_backward(Y),
        "check_step": lambda: guard.check_step(0.5, m.grads, 0.0, m.grad_buffer),
        "opt.step": lambda: tr.opt.step(m.grads),
        "next(stream)": lambda: next(tr.stream),
        "bound": g.run,
        "per_sample step": None,
    }
    ps = bench.Trainer(cfg, ts, True, prefetch="off")
    parts["per_sample step"] = ps.step
    res = {k: [] for k in parts}
    for r in range(9):
        for k, fn in parts.items():
            n = N if k != "per_sample step" else N // 10
            res[k].append(bench._timed(fn, n) * 1e6)
    for k, v in res.items():
        print(f"{k:20s} {statistics.median(v):8.2f} us")
    tr.close(); ps.close()
