"""B's training step on one fixed batch with the bias in the forward product (Z = b, then
Z += A_prev W^T; as shipped) against Z = A_prev W^T, then Z += b (BIAS_IN_PRODUCT_WIDTH raised);
alternated rounds, paired ratio of step times."""
import sys, statistics
import numpy as np
from mbtrain import bench, blas, config, model as modelmod, step, optim
from mbtrain.train import load_splits, build_model
cfg = config.load_config(sys.argv[1]); rounds = int(sys.argv[2]); N = int(sys.argv[3])
with blas.limit(cfg.train.threads, cfg.train.blas):
    ts = load_splits(cfg)[0]
    tr = bench.Trainer(cfg, ts, False, prefetch="off")
    X, Y = (v.copy() for v in next(tr.stream)); tr.close()
    steps = {}
    for k, w in (("in_product", modelmod.BIAS_IN_PRODUCT_WIDTH), ("add_after", 1 << 30)):
        modelmod.BIAS_IN_PRODUCT_WIDTH = w
        m = build_model(cfg)
        opt = optim.make(cfg.train, m.params, n_train=len(ts))
        steps[k] = step.TrainStep(m, opt, cfg.train.clip_norm, cfg.train.fused_update, input_bound=ts.entry_bound())
        steps[k](X, Y)
        print(k, m._bias_in_product, file=sys.stderr)
    res = {k: [] for k in steps}
    for r in range(rounds):
        for k in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            res[k].append(bench._timed(lambda: steps[k](X, Y), N) * 1e3)
    for k, v in res.items():
        print(k, "%.2f ms" % statistics.median(v))
    print("add_after / in_product paired %.3f" % statistics.median([a / b for a, b in zip(res["add_after"], res["in_product"])]))
