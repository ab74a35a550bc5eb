"""A config's training step on one fixed batch with the input layer's W column-major (as shipped)
against row-major (COLUMN_MAJOR_WIDTHS emptied), alternated rounds, paired ratio."""
import sys, time, statistics
import numpy as np
from mbtrain import bench, blas, config, model as modelmod, step, optim, data
from mbtrain.train import load_splits, build_model
cfg = config.load_config(sys.argv[1]); rounds = int(sys.argv[2]); N = int(sys.argv[3])
widths = {"F": modelmod.COLUMN_MAJOR_WIDTHS, "C": range(0)}
with blas.limit(cfg.train.threads, cfg.train.blas):
    ts = load_splits(cfg)[0]
    tr = bench.Trainer(cfg, ts, False, prefetch="off")
    X, Y = next(tr.stream); X, Y = X.copy(), Y.copy()
    tr.close()
    steps = {}
    for k, w in widths.items():
        modelmod.COLUMN_MAJOR_WIDTHS = w
        m = build_model(cfg)
        print(k, m.weights[0].flags.f_contiguous, file=sys.stderr)
        opt = optim.make(cfg.train, m.params, n_train=len(ts))
        steps[k] = step.TrainStep(m, opt, cfg.train.clip_norm, cfg.train.fused_update, input_bound=ts.entry_bound())
    res = {k: [] for k in steps}
    for r in range(rounds):
        for k in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            res[k].append(bench._timed(lambda: steps[k](X, Y), N) * 1e6)
    for k, v in res.items():
        print(k, "%.1f us" % statistics.median(v))
    print("C/F paired", "%.3f" % statistics.median([c / f for c, f in zip(res["C"], res["F"])]))
