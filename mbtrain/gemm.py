"""C = beta C + alpha A^T B (and y = y + alpha x, Z = Z + A W^T) through the BLAS numpy itself runs
on, so an SGD update (or a bias) rides in its product.

numpy's matmul computes C = A @ B only. The BLAS routine underneath (sgemm/dgemm) also takes
alpha and beta, and with them plain SGD's weight update needs no gradient array and no pass
over the weights of its own:

    W = 1 * W + (-lr) dZ^T A_prev          (m, n), dZ (K, m), A_prev (K, n)

which costs what dW = dZ^T A_prev alone costs (measured in README, Performance). The routine is
looked up in the library threadpoolctl reports for numpy (OpenBLAS in numpy's wheels) and checked
once against numpy on a small product; where it cannot be found or disagrees, `available()` is
False and callers use numpy. Only contiguous float32/float64 arrays qualify (C row- or column-major).

axpy(y, x, alpha) is the same for an SGD step that does form the gradient: y += alpha x in one
pass, where numpy needs two (alpha x into a scratch array, then y -= it): 3.3 against 7.9 us
for Nielsen's 23,872 parameters on one BLAS thread. With more threads OpenBLAS splits an axpy
of more than 10,000 entries, and waking the second thread every step cost more than it saved
(mbtrain.optim uses it only with train.threads = 1).

    from mbtrain import gemm
    if gemm.available(np.float32): gemm.update(W, dZ, A_prev, alpha=-lr)

Which library runs a step's products (`train.blas`, `select`): "numpy", the BLAS numpy was built
with (OpenBLAS in its wheels), or "mkl", Intel's oneMKL from the optional `mkl` package
(`pip install 'mbtrain[mkl]'`), called through its CBLAS interface like numpy's. "auto" takes MKL
when that package is installed and loads. A step's products are matmul/update/add_product;
under mkl those of at least MKL_MIN_WORK multiply-adds run through MKL, smaller ones and other
numpy calls (and axpy) through numpy's BLAS.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import weakref
from typing import Callable, NamedTuple

import numpy as np

# CBLAS enums
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# (symbol, integer type) of cblas_?gemm in the builds numpy ships or links: scipy-openblas (64-bit
# ints, numpy >= 2), older numpy wheels' openblas64_, and a plain LP64 CBLAS
_SYMBOLS = [("scipy_cblas_{}gemm64_", ctypes.c_int64), ("cblas_{}gemm64_", ctypes.c_int64),
            ("scipy_cblas_{}gemm", ctypes.c_int), ("cblas_{}gemm", ctypes.c_int)]
_TYPES = {np.dtype(np.float32): ("s", ctypes.c_float), np.dtype(np.float64): ("d", ctypes.c_double)}
_AXPY_SYMBOLS = [(t.replace("gemm", "axpy"), i) for t, i in _SYMBOLS]
_AXPBY_SYMBOLS = [(t.replace("gemm", "axpby"), i) for t, i in _SYMBOLS]   # an extension OpenBLAS and MKL have


LIBRARIES = ("numpy", "mkl")
_selected = "numpy"                                 # the library of the products (select())

# Under mkl, products of fewer multiply-adds (M N K) than this stay with numpy's BLAS: MKL's call
# costs ~6 us more on tiny ones. One thread, this machine: 10x784x30 (Nielsen's) 1.7x and
# 10x784x100 1.2-1.4x slower through MKL, 16x784x100 and 64x784x30 0.6-0.8, 64x784x100 (A's)
# 0.82-0.85, 256x1024x1024 (B's) 0.79-0.85 (README, Performance, "oneMKL").
MKL_MIN_WORK = 1 << 20


def select(library: str) -> str:
    """Run the products (matmul, update, add_product) through `library`: "numpy", "mkl" or "auto"
    (mkl where it loads, else numpy). Returns the library selected.

    Raises ValueError for an unknown name, and for "mkl" where the mkl package is not installed or
    does not load.
    """
    global _selected, matmul
    _selected = resolve(library)
    matmul = np.matmul if _selected == "numpy" else _matmul
    return _selected


def resolve(library: str) -> str:
    """What select(library) would select ("numpy" or "mkl"), selecting nothing; raises as select."""
    if library not in (*LIBRARIES, "auto"):
        raise ValueError(f"unknown BLAS library {library!r}: allowed auto, numpy, mkl")
    if library == "numpy":
        return "numpy"
    if _mkl_library() is None:
        if library == "mkl":
            raise ValueError("the mkl package is not installed (pip install 'mbtrain[mkl]') or its "
                             "libmkl_rt does not load")
        return "numpy"
    return "mkl"


def selected() -> str:
    """The library running the products now: "numpy" or "mkl"."""
    return _selected


@contextlib.contextmanager
def using(library: str):
    """select(library) for the duration of a with block, then the previous library again."""
    before = _selected
    select(library)
    try:
        yield _selected
    finally:
        select(before)


@functools.lru_cache(maxsize=None)
def _mkl_library():
    """The ctypes handle of the mkl package's libmkl_rt, set to the 32-bit integer (LP64) interface
    whatever MKL_INTERFACE_LAYER says, or None when the package is not installed or does not load."""
    try:
        from importlib.metadata import PackageNotFoundError, files
        found = [f for f in (files("mkl") or []) if f.name.startswith(("libmkl_rt.", "mkl_rt"))]
    except PackageNotFoundError:
        return None
    for f in sorted(found, key=lambda f: len(f.name)):
        try:
            lib = ctypes.CDLL(str(f.locate()))
            lib.MKL_Set_Interface_Layer.argtypes = [ctypes.c_int]
            lib.MKL_Set_Interface_Layer(0)          # MKL_INTERFACE_LP64: C int arguments
            return lib
        except (OSError, AttributeError):
            continue
    return None


def _library_paths(library: str = "numpy") -> list[str]:
    """Files of the BLAS libraries numpy has loaded (numpy's own first), or MKL's for "mkl"."""
    if library == "mkl":
        return [_mkl_library()._name] if _mkl_library() is not None else []
    try:
        from threadpoolctl import threadpool_info
    except ImportError:                              # pragma: no cover - a dependency
        return []
    found = [i for i in threadpool_info() if i.get("user_api") == "blas" and i.get("filepath")]
    found.sort(key=lambda i: "numpy" not in i["filepath"])
    return [i["filepath"] for i in found]


def _find(dtype: np.dtype, symbols, argtypes, agrees, library: str = "numpy"):
    """The first ctypes routine of `library` among `symbols` (templates of the letter s/d) whose
    argtypes(integer, scalar) calls agree with numpy (agrees(fn, dtype)), or None."""
    if dtype not in _TYPES:
        return None
    letter, scalar = _TYPES[dtype]
    for path in _library_paths(library):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for template, integer in symbols:
            fn = getattr(lib, template.format(letter), None)
            if fn is None:
                continue
            fn.argtypes = argtypes(integer, scalar)
            fn.restype = None
            if agrees(fn, dtype):
                return fn
    return None


def _routine(dtype: np.dtype, work: int | None = None):
    """The ctypes gemm for dtype of the library that runs a product of `work` multiply-adds
    (library_of; work None: the selected library), checked against numpy, or None."""
    library = _selected if work is None else library_of(work)
    return _library_routine(dtype, library) or _library_routine(dtype, _selected)


def library_of(work: int) -> str:
    """The library that runs a product of `work` multiply-adds (M N K) now: "numpy" or "mkl"."""
    return "numpy" if _selected == "numpy" or work < MKL_MIN_WORK else _selected


@functools.lru_cache(maxsize=None)
def _library_routine(dtype: np.dtype, library: str):
    """The ctypes gemm of `library` for dtype, checked against numpy, or None."""
    P = ctypes.c_void_p
    return _find(dtype, _SYMBOLS, lambda integer, scalar: [ctypes.c_int, ctypes.c_int, ctypes.c_int, integer,
                                                          integer, integer, scalar, P, integer, P, integer,
                                                          scalar, P, integer], _agrees_with_numpy, library)


@functools.lru_cache(maxsize=None)
def _axpy_routine(dtype: np.dtype):
    """The ctypes axpy for dtype, checked against numpy, or None."""
    P = ctypes.c_void_p
    return _find(dtype, _AXPY_SYMBOLS, lambda integer, scalar: [integer, scalar, P, integer, P, integer],
                 functools.partial(_level1_agrees_with_numpy, beta=None))


def _level1_agrees_with_numpy(fn, dtype: np.dtype, beta: float | None) -> bool:
    """True when fn makes y = -0.5 x + y (axpy, beta None) or y = -0.5 x + beta y (axpby) as numpy does."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal(7).astype(dtype), rng.standard_normal(7).astype(dtype)
    expected = -0.5 * x + (1.0 if beta is None else beta) * y
    try:
        fn(len(y), -0.5, x.ctypes.data, 1, *([] if beta is None else [beta]), y.ctypes.data, 1)
    except Exception:                               # noqa: BLE001 - any failure means: use numpy
        return False
    return bool(np.allclose(y, expected, rtol=1e-5, atol=1e-5))


def _agrees_with_numpy(fn, dtype: np.dtype) -> bool:
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((5, 3)).astype(dtype), rng.standard_normal((5, 4)).astype(dtype)
    C = rng.standard_normal((3, 4)).astype(dtype)
    expected = 0.5 * C + -2.0 * (A.T @ B)
    try:
        _product("update", fn, C, A, True, B, False, -2.0, 0.5)
    except Exception:                               # noqa: BLE001 - any failure means: use numpy
        return False
    return bool(np.allclose(C, expected, rtol=1e-5, atol=1e-5))


@functools.lru_cache(maxsize=None)
def _axpby_routine(dtype: np.dtype):
    """The ctypes axpby (y = alpha x + beta y) for dtype, checked against numpy, or None."""
    P = ctypes.c_void_p
    return _find(dtype, _AXPBY_SYMBOLS,
                 lambda integer, scalar: [integer, scalar, P, integer, scalar, P, integer],
                 functools.partial(_level1_agrees_with_numpy, beta=0.25))


class Level1(NamedTuple):
    """numpy's BLAS axpy and axpby for one dtype, called on addresses: axpy(n, alpha, x, 1, y, 1)
    makes y = alpha x + y, axpby(n, alpha, x, 1, beta, y, 1) makes y = alpha x + beta y, over n
    contiguous entries. For steps that resolve their arrays once (mbtrain.optim's SGD with momentum or
    decay, RMSprop, Adam)."""
    axpy: Callable
    axpby: Callable


def level1(dtype) -> Level1 | None:
    """Level1 for arrays of dtype, or None where numpy's BLAS lacks either routine."""
    axpy, axpby = _axpy_routine(np.dtype(dtype)), _axpby_routine(np.dtype(dtype))
    return Level1(axpy, axpby) if axpy is not None and axpby is not None else None


def available(dtype) -> bool:
    """True when update() can run for arrays of this dtype."""
    return _routine(np.dtype(dtype)) is not None


def axpy_available(dtype) -> bool:
    """True when axpy() can run for arrays of this dtype."""
    return _axpy_routine(np.dtype(dtype)) is not None


def axpy(y: np.ndarray, x: np.ndarray, alpha: float) -> None:
    """y = y + alpha x in place, for y and x of one dtype, size and memory order (C or Fortran),
    both contiguous (any shape: the update runs over their memory). A one-pair AxpyPlan."""
    AxpyPlan([(y, x)])(alpha)


class AxpyPlan:
    """y_i = y_i + alpha x_i for fixed pairs (y_i, x_i), checked and resolved to addresses once, so
    a call costs one BLAS call per pair (an optimizer step over the pieces of packed buffers).

    The plan holds the arrays; it stays valid while their data does not move (numpy arrays' never does).
    """

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]]):
        self.pairs = pairs
        self._fn = _axpy_routine(pairs[0][0].dtype) if pairs else None
        for y, x in pairs:
            _check_axpy(y, x)
        # the calls' arguments as ctypes values, made once (_ctypes_arguments): 4.0 against 5.4 us a
        # call over Nielsen's parameters; alpha (position 1) is set at each call
        self._calls = [_ctypes_arguments(self._fn, [y.size, 0.0, _address(x), 1, _address(y), 1])
                       for y, x in pairs if y.size]

    def __call__(self, alpha: float) -> None:
        fn = self._fn
        if self._calls:
            a = fn.argtypes[1](alpha)
            for n, _, x, incx, y, incy in self._calls:
                fn(n, a, x, incx, y, incy)


def _ctypes_arguments(fn, values: list) -> list:
    """values converted once to the ctypes types of fn's arguments, so a call passes them as they are."""
    return [kind(value) for kind, value in zip(fn.argtypes, values)]


def _check_axpy(y: np.ndarray, x: np.ndarray) -> None:
    if x.dtype != y.dtype or x.shape != y.shape:
        raise ValueError(f"gemm.axpy: y {y.shape} {y.dtype} and x {x.shape} {x.dtype} do not fit")
    same_order = (x.flags.c_contiguous and y.flags.c_contiguous) or (x.flags.f_contiguous and y.flags.f_contiguous)
    if not (same_order and y.flags.writeable):
        raise ValueError("gemm.axpy needs a writeable y and an x, contiguous in the same order")


def _matmul(A: np.ndarray, B: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = A @ B for 2-d arrays while MKL is selected (`matmul` below): MKL's gemm, or numpy's matmul
    for products under MKL_MIN_WORK (library_of).

    A and B may be transposed views (A.T of a row-major array reads it with the transpose flag);
    out row- or column-major. Operands gemm cannot take (mixed dtypes, strided views) go to
    numpy's matmul. Returns out.
    """
    if library_of(out.size * A.shape[-1]) == "numpy" or not fits(A, B, out):
        return np.matmul(A, B, out=out)
    _product("matmul", _routine(out.dtype), out, A, False, B, False, 1.0, 0.0)
    return out


# matmul(A, B, out=out): _matmul while MKL is selected; numpy's own matmul while numpy's BLAS runs the
# products, as _matmul would call it, so a product costs no wrapper: ~0.4 us a call, five calls in
# each of Nielsen's steps (select() rebinds it; callers look it up as gemm.matmul at each call)
matmul = np.matmul


def fits(*arrays: np.ndarray) -> bool:
    """True when a gemm call can take these arrays as they are: one dtype, each row- or
    column-major contiguous."""
    dtype = arrays[0].dtype
    return all(a.dtype == dtype and (a.flags.c_contiguous or a.flags.f_contiguous) for a in arrays)


def update(C: np.ndarray, A: np.ndarray, B: np.ndarray, alpha: float, beta: float = 1.0) -> None:
    """C = beta C + alpha A^T B in place: C (m, n), A (K, m), B (K, n), one dtype.

    Each row- or column-major (a column-major C has its transpose updated as
    C^T = beta C^T + alpha B^T A, the same numbers).
    """
    _product("update", _routine(C.dtype, C.size * A.shape[0]), C, A, True, B, False, alpha, beta)


def add_product(Z: np.ndarray, A: np.ndarray, W: np.ndarray) -> None:
    """Z = Z + A @ W.T in place: Z (K, m), A (K, n), W (m, n), one dtype.

    A forward product with the bias already in Z (Z filled with b): OpenBLAS zeroes C before a
    beta = 0 product, so the fill costs no more than that zeroing and the pass of `Z += b` is saved.
    Each row- or column-major.
    """
    _product("add_product", _routine(Z.dtype, Z.size * A.shape[-1]), Z, A, False, W, True, 1.0, 1.0)


def _product(name: str, fn, C: np.ndarray, A: np.ndarray, trans_a: bool, B: np.ndarray, trans_b: bool,
             alpha: float, beta: float) -> None:
    """C = beta C + alpha op(A) op(B) in place through one row-major gemm call, op(X) = X.T when
    trans_x. Each array row- or column-major: a column-major A or B is read as its row-major
    transpose with the flag flipped, a column-major C is made as C^T = op(B)^T op(A)^T.

    `name` is the caller's, for the errors.
    """
    args, _ = _arguments(name, C, A, trans_a, B, trans_b)
    if args is None:
        _degenerate(C, A, trans_a, beta)
        return
    args[_ALPHA], args[_BETA] = float(alpha), float(beta)
    fn(*args)


# positions of alpha and beta among a row-major cblas_?gemm call's arguments
_ALPHA, _BETA = 6, 11


def _arguments(name: str, C: np.ndarray, A: np.ndarray, trans_a: bool, B: np.ndarray, trans_b: bool):
    """(the 14 arguments of the row-major gemm call that makes C = beta C + alpha op(A) op(B), with
    alpha and beta left as None; {"A": position of A's address, "B": B's}), after checking shapes,
    dtypes and layouts; (None, {}) when the product is empty (K, M or N is 0: see _degenerate)."""
    a_rows, a_cols = A.shape
    b_rows, b_cols = B.shape
    M, K = (a_cols, a_rows) if trans_a else (a_rows, a_cols)
    N, K_b = (b_rows, b_cols) if trans_b else (b_cols, b_rows)
    if K_b != K or C.shape != (M, N) or not (A.dtype == B.dtype == C.dtype):
        raise ValueError(f"gemm.{name}: shapes C {C.shape}, A {A.shape}, B {B.shape} or dtypes do not fit")
    fa, fb, fc = A.flags, B.flags, C.flags
    if not ((fa.c_contiguous or fa.f_contiguous) and (fb.c_contiguous or fb.f_contiguous)
            and (fc.c_contiguous or fc.f_contiguous) and fc.writeable):
        raise ValueError(f"gemm.{name} needs contiguous A and B and a writeable, contiguous C")
    if K == 0 or M == 0 or N == 0:
        return None, {}
    # a column-major operand is its row-major transpose: the other flag, the other leading dimension
    ta, lda = (trans_a, a_cols) if fa.c_contiguous else (not trans_a, a_rows)
    tb, ldb = (trans_b, b_cols) if fb.c_contiguous else (not trans_b, b_rows)
    if fc.c_contiguous:
        return [_ROW_MAJOR, _TRANS if ta else _NO_TRANS, _TRANS if tb else _NO_TRANS, M, N, K, None,
                _address(A), max(lda, 1), _address(B), max(ldb, 1), None, _address(C), max(N, 1)], {"A": 7, "B": 9}
    # column-major C: its row-major transpose C^T (N, M)
    return [_ROW_MAJOR, _NO_TRANS if tb else _TRANS, _NO_TRANS if ta else _TRANS, N, M, K, None,
            _address(B), max(ldb, 1), _address(A), max(lda, 1), None, _address(C), max(M, 1)], {"A": 9, "B": 7}


def _degenerate(C: np.ndarray, A: np.ndarray, trans_a: bool, beta: float) -> None:
    """An empty product's meaning in numpy (and BLAS): C = beta C when K is 0; nothing when C is empty."""
    if A.shape[0 if trans_a else 1] == 0:
        C *= beta


class Product:
    """One product C = beta C + alpha op(A) op(B) of a training step, on its fixed buffers: checked,
    and its BLAS gemm call's arguments made, once (update() and add_product() do both at every call,
    ~3-4 us; the call itself took ~1 us at Nielsen's 10 x 30 x 10 and a step makes up to three such
    products per layer: README, "Why it is fast").

    A or B may be another array at a call (the next batch): call(alpha, beta, A=X) takes X's address,
    and re-checks the layout when X's shape, dtype or memory order differ from the last one's. The plan
    holds its arrays and stays valid while their data does not move (numpy arrays' never does); it
    follows select() to the library that runs a product of its size.
    """

    def __init__(self, name: str, C: np.ndarray, A: np.ndarray, trans_a: bool, B: np.ndarray, trans_b: bool):
        self.name, self.C, self.A, self.B, self.trans = name, C, A, B, (trans_a, trans_b)
        self._make()

    def _make(self) -> None:
        A, B, C = self.A, self.B, self.C
        args, self._slots = _arguments(self.name, C, A, self.trans[0], B, self.trans[1])
        self._library = _selected
        self.fn = _routine(C.dtype, C.size * A.shape[0 if self.trans[0] else 1])
        if self.fn is None:
            raise ValueError(f"gemm.{self.name}: no BLAS gemm found for {C.dtype} (gemm.available)")
        self._keys = {"A": _layout(A), "B": _layout(B)}
        if args is None:
            self._args = None
            return
        args[_ALPHA] = args[_BETA] = 0.0
        self._args = _ctypes_arguments(self.fn, args)
        self._scalars = (None, None)                   # alpha and beta as last set in _args

    def __call__(self, alpha: float, beta: float = 1.0, A: np.ndarray | None = None,
                 B: np.ndarray | None = None) -> None:
        if self._library != _selected:
            self._make()
        if A is not None and A is not self.A:
            self._swap("A", A)
        if B is not None and B is not self.B:
            self._swap("B", B)
        args = self._args
        if args is None:
            _degenerate(self.C, self.A, self.trans[0], beta)
            return
        if (alpha, beta) != self._scalars:
            kinds = self.fn.argtypes
            args[_ALPHA], args[_BETA] = kinds[_ALPHA](alpha), kinds[_BETA](beta)
            self._scalars = (alpha, beta)
        self.fn(*args)

    def _swap(self, which: str, array: np.ndarray) -> None:
        if self._args is None or _layout(array) != self._keys[which]:
            before = getattr(self, which)
            setattr(self, which, array)
            try:
                self._make()                       # another shape, dtype or layout: check it all again
            except ValueError:
                setattr(self, which, before)       # refused: the plan stays as it was
                raise
        else:
            self._args[self._slots[which]] = ctypes.c_void_p(_address(array))
            setattr(self, which, array)


def _layout(a: np.ndarray) -> tuple:
    """What a Product's arguments depend on besides an operand's address (strides: its memory order)."""
    return a.shape, a.dtype, a.strides


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
