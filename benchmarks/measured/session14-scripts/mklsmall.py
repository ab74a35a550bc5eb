import numpy as np, time, statistics
from mbtrain import gemm, blas
def t(fn, N=3000):
    for _ in range(50): fn()
    r = []
    for _ in range(9):
        s = time.perf_counter()
        for _ in range(N): fn()
        r.append((time.perf_counter() - s) / N * 1e6)
    return statistics.median(r)
rng = np.random.default_rng(0); f = np.float32
with blas.limit(1, "mkl"):
    for K, n, m in [(10, 784, 30), (64, 784, 100), (256, 784, 256)]:
        X = rng.random((K, n), dtype=f); W = rng.random((m, n), dtype=f); Z = np.empty((K, m), f)
        gemm.MKL_MIN_WORK = 1 << 40
        a = t(lambda: gemm.matmul(X, W.T, out=Z))
        gemm.MKL_MIN_WORK = 1
        b = t(lambda: gemm.matmul(X, W.T, out=Z))
        print((K, n, m), "openblas %.1f us, mkl %.1f us" % (a, b), gemm.library_of(K*n*m))
