"""The first batch of a fit: how long os.fork takes in the parent, and the wait for the child's first receipt."""
import os, sys, time
import numpy as np
from mbtrain import prefetch, config, blas, bench
from mbtrain.train import load_splits
real_fork = os.fork
times = {}
def timed_fork():
    t = time.perf_counter()
    pid = real_fork()
    if pid:
        times["fork"] = time.perf_counter() - t
    return pid
os.fork = timed_fork
cfg = config.load_config(sys.argv[1])
with blas.limit(cfg.train.threads, cfg.train.blas):
    ts = load_splits(cfg)[0]
    tr = bench.Trainer(cfg, ts, False)
    t = time.perf_counter(); next(tr.stream); first = time.perf_counter() - t
    t = time.perf_counter(); next(tr.stream); second = time.perf_counter() - t
    import resource
    print(f"fork {1e3*times['fork']:.1f} ms, first batch {1e3*first:.1f} ms, second {1e6*second:.0f} us, "
          f"rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:.0f} MB")
    tr.close()
