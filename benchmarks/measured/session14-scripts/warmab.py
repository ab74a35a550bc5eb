"""A's step on 40 pre-gathered batches cycled in private memory: as is, copied first into one fixed
buffer, or read once first; against one fixed batch. Alternated rounds, each paired with the bound."""
import sys, time, statistics, types
import numpy as np
from mbtrain import bench, blas, config, flat
from mbtrain.train import load_splits
cfg = config.load_config(sys.argv[1]); rounds, steps = int(sys.argv[2]), int(sys.argv[3])
with blas.limit(cfg.train.threads, cfg.train.blas):
    ts = load_splits(cfg)[0]
    tr = bench.Trainer(cfg, ts, False, prefetch="off")
    pre = [tuple(flat.aligned(v.shape, v.dtype) for v in (X, Y)) for X, Y in [next(tr.stream)] * 40]
    for i in range(40):
        X, Y = next(tr.stream); np.copyto(pre[i][0], X); np.copyto(pre[i][1], Y)
    st = tr.train_step
    buf = flat.aligned(pre[0][0].shape, pre[0][0].dtype)
    ones = np.ones(buf.shape[1], buf.dtype)
    c = [0]
    def cycle():
        X, Y = pre[c[0] % 40]; c[0] += 1; st(X, Y, None)
    def cycle_copy():
        X, Y = pre[c[0] % 40]; c[0] += 1; np.copyto(buf, X); st(buf, Y, None)
    def cycle_touch():
        X, Y = pre[c[0] % 40]; c[0] += 1; np.matmul(X, ones); st(X, Y, None)
    def fixed():
        st(pre[0][0], pre[0][1], None)
    fns = {"cycle": cycle, "copy": cycle_copy, "touch": cycle_touch, "fixed": fixed}
    g = bench._Gemms(cfg.model.layers, cfg.train.batch_size, cfg.train.dtype, np.random.default_rng(0), st.fused)
    res = {k: [] for k in fns}; raw = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            tb = bench._timed(g.run, steps)
            tv = bench._timed(fns[k], steps)
            tb2 = bench._timed(g.run, steps)
            res[k].append((tb + tb2) / 2 / tv); raw[k].append(tv * 1e6)
    for k in names:
        print(k, "ratio %.3f" % statistics.median(res[k]), "step %.1f us" % statistics.median(raw[k]),
              "vs cycle %.3f" % statistics.median([a / b for a, b in zip(raw[k], raw["cycle"])]))
