"""C = beta C + alpha A^T B through the BLAS numpy itself runs on, so an SGD update rides in its product.

numpy's matmul computes C = A @ B only. The BLAS routine underneath (sgemm/dgemm) also takes
alpha and beta, and with them plain SGD's weight update needs no gradient array and no pass
over the weights of its own:

    W = 1 * W + (-lr) dZ^T A_prev          (m, n), dZ (K, m), A_prev (K, n)

which costs what dW = dZ^T A_prev alone costs (measured in README, Performance). The routine is
looked up in the library threadpoolctl reports for numpy (OpenBLAS in numpy's wheels) and checked
once against numpy on a small product; where it cannot be found or disagrees, `available()` is
False and callers use numpy. Only contiguous float32/float64 arrays qualify (C row- or column-major).

    from mbtrain import gemm
    if gemm.available(np.float32): gemm.update(W, dZ, A_prev, alpha=-lr)
"""

from __future__ import annotations

import ctypes
import functools
import weakref

import numpy as np

# CBLAS enums
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# (symbol, integer type) of cblas_?gemm in the builds numpy ships or links: scipy-openblas (64-bit
# ints, numpy >= 2), older numpy wheels' openblas64_, and a plain LP64 CBLAS
_SYMBOLS = [("scipy_cblas_{}gemm64_", ctypes.c_int64), ("cblas_{}gemm64_", ctypes.c_int64),
            ("scipy_cblas_{}gemm", ctypes.c_int), ("cblas_{}gemm", ctypes.c_int)]
_TYPES = {np.dtype(np.float32): ("s", ctypes.c_float), np.dtype(np.float64): ("d", ctypes.c_double)}


def _library_paths() -> list[str]:
    """Files of the BLAS libraries numpy has loaded (numpy's own first)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:                              # pragma: no cover - a dependency
        return []
    found = [i for i in threadpool_info() if i.get("user_api") == "blas" and i.get("filepath")]
    found.sort(key=lambda i: "numpy" not in i["filepath"])
    return [i["filepath"] for i in found]


@functools.lru_cache(maxsize=None)
def _routine(dtype: np.dtype):
    """The ctypes gemm for dtype, checked against numpy, or None."""
    if dtype not in _TYPES:
        return None
    letter, scalar = _TYPES[dtype]
    for path in _library_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for template, integer in _SYMBOLS:
            fn = getattr(lib, template.format(letter), None)
            if fn is None:
                continue
            P = ctypes.c_void_p
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer, integer, scalar,
                           P, integer, P, integer, scalar, P, integer]
            fn.restype = None
            if _agrees_with_numpy(fn, dtype):
                return fn
    return None


def _agrees_with_numpy(fn, dtype: np.dtype) -> bool:
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((5, 3)).astype(dtype), rng.standard_normal((5, 4)).astype(dtype)
    C = rng.standard_normal((3, 4)).astype(dtype)
    expected = 0.5 * C + -2.0 * (A.T @ B)
    try:
        _call(fn, C, A, B, -2.0, 0.5)
    except Exception:                               # noqa: BLE001 - any failure means: use numpy
        return False
    return bool(np.allclose(C, expected, rtol=1e-5, atol=1e-5))


def available(dtype) -> bool:
    """True when update() can run for arrays of this dtype."""
    return _routine(np.dtype(dtype)) is not None


def update(C: np.ndarray, A: np.ndarray, B: np.ndarray, alpha: float, beta: float = 1.0) -> None:
    """C = beta C + alpha A^T B in place: C (m, n), A (K, m), B (K, n), one dtype.

    A and B C-contiguous; C row- or column-major (then its transpose is updated as
    C^T = beta C^T + alpha B^T A, the same numbers).
    """
    _call(_routine(C.dtype), C, A, B, alpha, beta)


def _call(fn, C: np.ndarray, A: np.ndarray, B: np.ndarray, alpha: float, beta: float) -> None:
    K, m = A.shape
    n = B.shape[1]
    if B.shape[0] != K or C.shape != (m, n) or not (A.dtype == B.dtype == C.dtype):
        raise ValueError(f"gemm.update: shapes C {C.shape}, A {A.shape}, B {B.shape} or dtypes do not fit")
    if not (A.flags.c_contiguous and B.flags.c_contiguous and C.flags.writeable
            and (C.flags.c_contiguous or C.flags.f_contiguous)):
        raise ValueError("gemm.update needs C-contiguous A and B and a writeable, contiguous C")
    if K == 0:                                       # BLAS would skip the scaling too; numpy's meaning
        C *= beta
        return
    if C.flags.c_contiguous:
        fn(_ROW_MAJOR, _TRANS, _NO_TRANS, m, n, K, float(alpha), _address(A), max(m, 1), _address(B), max(n, 1),
           float(beta), _address(C), max(n, 1))
    else:                                            # column-major C: its row-major transpose C^T (n, m)
        fn(_ROW_MAJOR, _TRANS, _NO_TRANS, n, m, K, float(alpha), _address(B), max(n, 1), _address(A), max(m, 1),
           float(beta), _address(C), max(m, 1))


_addresses: dict[int, tuple[weakref.ref, int]] = {}


def _address(a: np.ndarray) -> int:
    """a's data pointer; cached per array object (asking numpy costs a microsecond, a step asks often).

    Entries hold weak references: they keep no array alive, and an id reused by a new array
    finds its entry's array gone.
    """
    hit = _addresses.get(id(a))
    if hit is not None and hit[0]() is a:
        return hit[1]
    if len(_addresses) >= 256:
        _addresses.clear()
    address = a.__array_interface__["data"][0]
    _addresses[id(a)] = (weakref.ref(a), address)
    return address
