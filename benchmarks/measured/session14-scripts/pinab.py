"""A's step as bench times it, against its gemm bound, with and without CPU pinning
(parent on cpu 0, prefetch child on cpu 1). Alternated rounds; paired ratios."""
import os, sys, time, statistics
import numpy as np

from mbtrain import bench, blas, config
from mbtrain.train import load_splits
cfgpath = sys.argv[1] if len(sys.argv) > 1 else "configs/bench-a.yaml"
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 20
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
cfg = config.load_config(cfgpath)
allcpu = os.sched_getaffinity(0)
with blas.limit(cfg.train.threads, cfg.train.blas):
    ts = load_splits(cfg)[0]
    tr = bench.Trainer(cfg, ts, False)
    g = bench._Gemms(cfg.model.layers, cfg.train.batch_size, cfg.train.dtype, np.random.default_rng(0), tr.train_step.fused)
    for _ in range(300): tr.step()
    child = tr.batches._forked.pid
    print("child", child, file=sys.stderr)
    res = {"pin": [], "free": []}
    for r in range(rounds):
        for mode in (("pin", "free") if r % 2 == 0 else ("free", "pin")):
            if mode == "pin":
                os.sched_setaffinity(0, {0}); os.sched_setaffinity(child, {1})
            else:
                os.sched_setaffinity(0, allcpu); os.sched_setaffinity(child, allcpu)
            time.sleep(0.02)
            tb = bench._timed(g.run, steps)
            tv = bench._timed(tr.step, steps)
            time.sleep(0.02)
            tb2 = bench._timed(g.run, steps)
            res[mode].append((tb + tb2) / 2 / tv)
    for k, v in res.items():
        print(k, "median ratio %.3f" % statistics.median(v), " ".join("%.2f" % x for x in v))
    print("pin/free paired", statistics.median([a / b for a, b in zip(res["pin"], res["free"])]))
    tr.close()
