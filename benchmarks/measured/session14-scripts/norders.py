import numpy as np, time, statistics, itertools
from threadpoolctl import threadpool_limits
threadpool_limits(1)
rng = np.random.default_rng(0)
f = np.float32
def t(fn, N=3000):
    for _ in range(50): fn()
    r = []
    for _ in range(9):
        s = time.perf_counter()
        for _ in range(N): fn()
        r.append((time.perf_counter() - s) / N * 1e6)
    return statistics.median(r)
for K, n, m in [(10, 784, 30), (10, 784, 100), (64, 784, 100), (10, 30, 10)]:
    X0 = rng.random((K, n), dtype=f); W0 = rng.random((m, n), dtype=f)
    out = []
    for xo, wo, zo in itertools.product("CF", "CF", "CF"):
        X = np.array(X0, order=xo); W = np.array(W0, order=wo); Z = np.empty((K, m), f, order=zo)
        out.append(f"X{xo}W{wo}Z{zo} {t(lambda: np.matmul(X, W.T, out=Z)):6.2f}")
    print((K, n, m), " | ".join(out))
