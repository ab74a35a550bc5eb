import numpy as np, time, statistics
from threadpoolctl import threadpool_limits
threadpool_limits(1)
rng = np.random.default_rng(0)
f = np.float32
X = rng.random((10, 784), dtype=f); W = rng.random((30, 784), dtype=f); Z = np.empty((10, 30), f)
dZ = rng.random((10, 30), dtype=f); dW = np.empty((30, 784), f)
WF = np.asfortranarray(W); dWF = np.asfortranarray(dW)
def t(fn, n=3000):
    for _ in range(50): fn()
    r = []
    for _ in range(7):
        s = time.perf_counter()
        for _ in range(n): fn()
        r.append((time.perf_counter() - s) / n * 1e6)
    return statistics.median(r)
cases = {
 "fwd X@W.T (W C)": lambda: np.matmul(X, W.T, out=Z),
 "fwd X@W.T (W F)": lambda: np.matmul(X, WF.T, out=Z),
 "fwd (W@X.T).T": lambda: np.matmul(W, X.T, out=Z.T),
 "dW=dZ.T@X (C out)": lambda: np.matmul(dZ.T, X, out=dW),
 "dW F out": lambda: np.matmul(X.T, dZ, out=dWF.T),
 "einsum fwd": lambda: np.einsum("kn,mn->km", X, W, out=Z),
 "einsum dW": lambda: np.einsum("km,kn->mn", dZ, X, out=dW),
}
for k, fn in cases.items():
    print(f"{k:22s} {t(fn):8.2f} us")
for K in (10, 16, 32, 64):
    Xk = rng.random((K, 784), dtype=f); Zk = np.empty((K, 30), f); dZk = rng.random((K, 30), dtype=f)
    print(K, "fwd %.2f" % t(lambda: np.matmul(Xk, W.T, out=Zk)), "dW %.2f" % t(lambda: np.matmul(dZk.T, Xk, out=dW)))
