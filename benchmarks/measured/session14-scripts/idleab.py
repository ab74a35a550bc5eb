"""A setting's step (bench's Trainer) with prefetch off, a normal prefetch child, and a SCHED_IDLE
child, each round paired with the gemm bound; alternated rounds."""
import os, sys, time, statistics
import numpy as np
from mbtrain import bench, blas, config
from mbtrain.train import load_splits
cfgpath, rounds, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
variants = sys.argv[4].split(",")
cfg = config.load_config(cfgpath)
with blas.limit(cfg.train.threads, cfg.train.blas):
    ts = load_splits(cfg)[0]
    trs = {}
    for v in variants:
        trs[v] = bench.Trainer(cfg, ts, False, prefetch="off" if v == "off" else "on")
    g = bench._Gemms(cfg.model.layers, cfg.train.batch_size, cfg.train.dtype, np.random.default_rng(0), trs[variants[0]].train_step.fused)
    for v, tr in trs.items():
        for _ in range(20): tr.step()
        if v == "idle":
            os.sched_setscheduler(tr.batches._forked.pid, os.SCHED_IDLE, os.sched_param(0))
        if v == "nice":
            os.setpriority(os.PRIO_PROCESS, tr.batches._forked.pid, 19)
    res = {v: [] for v in variants}
    for r in range(rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            time.sleep(0.02)
            tb = bench._timed(g.run, steps)
            tv = bench._timed(trs[v].step, steps)
            time.sleep(0.02)
            tb2 = bench._timed(g.run, steps)
            res[v].append((tb + tb2) / 2 / tv)
    for v, x in res.items():
        print(v, "median ratio %.3f" % statistics.median(x), "paired vs first %.3f" % statistics.median([a / b for a, b in zip(x, res[variants[0]])]))
    for tr in trs.values(): tr.close()
