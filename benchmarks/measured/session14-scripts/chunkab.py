"""A's step (bench's Trainer, prefetch process) with different batches per hand-over (slot), each
round paired with the gemm bound; alternated rounds."""
import os, sys, time, statistics
import numpy as np
from mbtrain import bench, blas, config
from mbtrain.train import load_splits
cfgpath, rounds, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
per = [int(x) for x in sys.argv[4].split(",")]
cfg = config.load_config(cfgpath)
with blas.limit(cfg.train.threads, cfg.train.blas):
    ts = load_splits(cfg)[0]
    trs = {}
    for n in per:
        tr = bench.Trainer(cfg, ts, False)
        tr.batches.batches_per_chunk = (lambda n=n: n)
        trs[n] = tr
    g = bench._Gemms(cfg.model.layers, cfg.train.batch_size, cfg.train.dtype, np.random.default_rng(0), trs[per[0]].train_step.fused)
    for tr in trs.values():
        for _ in range(200): tr.step()
    res = {n: [] for n in per}
    for r in range(rounds):
        order = per if r % 2 == 0 else per[::-1]
        for n in order:
            time.sleep(0.02)
            tb = bench._timed(g.run, steps)
            tv = bench._timed(trs[n].step, steps)
            time.sleep(0.02)
            tb2 = bench._timed(g.run, steps)
            res[n].append((tb + tb2) / 2 / tv)
    for n, v in res.items():
        print(n, "median ratio %.3f" % statistics.median(v), "paired vs first %.3f" % statistics.median([a / b for a, b in zip(v, res[per[0]])]))
    for tr in trs.values(): tr.close()
