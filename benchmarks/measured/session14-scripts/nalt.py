import numpy as np, time, statistics
from threadpoolctl import threadpool_limits
threadpool_limits(1)
rng = np.random.default_rng(0)
f = np.float32
K, n, m = 10, 784, 30
X = rng.random((K, n), dtype=f); W = rng.random((m, n), dtype=f); Z = np.empty((K, m), f)
dZ = rng.random((K, m), dtype=f); dW = np.empty((m, n), f)
WT = np.ascontiguousarray(W.T)
def t(fn, N=3000):
    for _ in range(50): fn()
    r = []
    for _ in range(9):
        s = time.perf_counter()
        for _ in range(N): fn()
        r.append((time.perf_counter() - s) / N * 1e6)
    return statistics.median(r)
def gemv_loop():
    for k in range(K):
        np.matmul(W, X[k], out=Z[k])
def vm_loop():
    for k in range(K):
        np.matmul(X[k], WT, out=Z[k])
def outer_loop():
    for k in range(K):
        pass
cases = {
 "gemm X@W.T": lambda: np.matmul(X, W.T, out=Z),
 "gemv loop W@x": gemv_loop,
 "vecmat loop x@WT": vm_loop,
 "gemm dW=dZ.T@X": lambda: np.matmul(dZ.T, X, out=dW),
 "ger loop": None,
}
import ctypes
for k, fn in cases.items():
    if fn: print(f"{k:20s} {t(fn):8.2f} us")
# dW as sum of K outer products via np.multiply.outer? via broadcasting: (m,1,K)... use einsum
print("einsum dW opt", t(lambda: np.einsum("km,kn->mn", dZ, X, out=dW, optimize=False)))
print("tensordot fwd", t(lambda: np.tensordot(X, W, axes=([1], [1]))))
print("float64 gemm fwd", t(lambda: np.matmul(X.astype(np.float64), W.astype(np.float64).T)))
