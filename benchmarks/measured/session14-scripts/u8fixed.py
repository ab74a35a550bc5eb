"""A's step as bench times it, on batches prefetched by the child as float32 (as shipped) against
the child gathering raw uint8 rows and the training process casting each batch into one fixed
float32 buffer. Each round paired with the gemm bound; alternated rounds."""
import sys, time, statistics, types
import numpy as np
from mbtrain import bench, blas, config, data, prefetch
from mbtrain.train import load_splits
cfgpath, rounds, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = config.load_config(cfgpath)

def make_u8(b):
    K = b.batch_size
    Xf = np.zeros((K, b.data.features), b.dtype)
    def _shared_ring(self):
        rows = self.batches_per_chunk() * self.batch_size
        specs = [((rows, self.data.features), np.uint8), ((rows, self.classes), self.dtype)]
        arrays = prefetch.shared_arrays(specs * (prefetch.DEPTH + 2))
        self._ring = list(zip(arrays[0::2], arrays[1::2]))
    def _fill_slot(self, rows, slot):
        X, Y = self._slot(slot, len(rows))
        np.take(self.data.x, rows, axis=0, out=X)
        data.targets(self.data.y[rows], Y)
        return len(rows)
    def _views(self, slot, n):
        X, Y = self._slot(slot, n)
        def gen():
            for at in range(0, n, K):
                Xb = Xf[:min(K, n - at)]
                np.copyto(Xb, X[at:at + K], casting="unsafe")
                np.divide(Xb, 255, out=Xb)
                yield Xb, Y[at:at + K]
        return gen()
    for f in (_shared_ring, _fill_slot, _views):
        setattr(b, f.__name__, types.MethodType(f, b))

with blas.limit(cfg.train.threads, cfg.train.blas):
    ts = load_splits(cfg)[0]
    trs = {"f32": bench.Trainer(cfg, ts, False), "u8": bench.Trainer(cfg, ts, False)}
    make_u8(trs["u8"].batches)
    # same batches?
    take = lambda stream: [tuple(v.copy() for v in next(stream)) for _ in range(25)]   # copied at once
    a, b = take(trs["f32"].stream), take(trs["u8"].stream)
    print("identical batches:", all(np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1]) for p, q in zip(a, b)))
    g = bench._Gemms(cfg.model.layers, cfg.train.batch_size, cfg.train.dtype, np.random.default_rng(0), trs["f32"].train_step.fused)
    for tr in trs.values():
        for _ in range(200): tr.step()
    Xf, Yf = (v.copy() for v in next(trs["f32"].stream))
    fixed = types.SimpleNamespace(step=lambda: trs["f32"].train_step(Xf, Yf, None))
    trs["fixed"] = fixed
    def fixed_loader():
        next(trs["u8"].stream)
        trs["f32"].train_step(Xf, Yf, None)
    trs["fixed+loader"] = types.SimpleNamespace(step=fixed_loader)
    pre = [tuple(v.copy() for v in next(trs["f32"].stream)) for _ in range(40)]   # 40 batches, private memory
    it = iter(range(10**9))
    def cycling():
        X, Y = pre[next(it) % 40]
        trs["f32"].train_step(X, Y, None)
    trs["cycle40"] = types.SimpleNamespace(step=cycling)
    res = {k: [] for k in trs}; raw = {k: [] for k in trs}
    names = list(trs)
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            time.sleep(0.02)
            tb = bench._timed(g.run, steps)
            tv = bench._timed(trs[k].step, steps)
            time.sleep(0.02)
            tb2 = bench._timed(g.run, steps)
            res[k].append((tb + tb2) / 2 / tv); raw[k].append(tv * 1e6)
    for k in names:
        print(k, "ratio %.3f" % statistics.median(res[k]), "step %.1f us" % statistics.median(raw[k]))
    print("u8/f32 step time paired %.3f" % statistics.median([a / b for a, b in zip(raw["u8"], raw["f32"])]))
    print("f32/fixed step time paired %.3f" % statistics.median([a / b for a, b in zip(raw["f32"], raw["fixed"])]))
    trs["f32"].close(); trs["u8"].close()
