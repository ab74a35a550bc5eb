"""Where one `mbtrain fit` epoch of a config goes: time inside TrainStep.__call__, inside the
batch generator's next(), and the rest of the loop; the time to the first batch."""
import sys, time, json
import numpy as np
from mbtrain import step, data, train, config, blas
cfgpath = sys.argv[1]
sets = sys.argv[2:]
acc = {"step": 0.0, "next": 0.0, "first": None, "n": 0}
real_call = step.TrainStep.__call__
def timed_call(self, X, Y, masks=None):
    t = time.perf_counter()
    try:
        return real_call(self, X, Y, masks)
    finally:
        acc["step"] += time.perf_counter() - t
        acc["n"] += 1
step.TrainStep.__call__ = timed_call
real_epoch = data.Batches.epoch
def timed_epoch(self, epoch, first_step=0):
    gen = real_epoch(self, epoch, first_step)
    t0 = time.perf_counter()
    while True:
        t = time.perf_counter()
        try:
            item = next(gen)
        except StopIteration:
            return
        dt = time.perf_counter() - t
        if acc["first"] is None:
            acc["first"] = dt
        acc["next"] += dt
        yield item
data.Batches.epoch = timed_epoch
import tempfile, os
cfg = config.load_config(cfgpath, sets)
with blas.limit(cfg.train.threads, cfg.train.blas), tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    os.makedirs(tmp + "/checkpoints")
    summary = train.fit(cfg, tmp, quiet=True)
    wall = time.perf_counter() - t0
ts = summary["train_seconds"]
print(f"train_seconds {ts:.3f}  steps {acc['n']}  in step {acc['step']:.3f} ({1e6*acc['step']/acc['n']:.0f} us/step)  "
      f"in next() {acc['next']:.3f} (first {1e3*acc['first']:.1f} ms)  rest {ts - acc['step'] - acc['next']:.3f} "
      f"({1e6*(ts - acc['step'] - acc['next'])/acc['n']:.0f} us/step)  wall {wall:.2f}")
