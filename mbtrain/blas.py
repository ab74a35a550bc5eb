"""The BLAS of a run: which library runs the matrix products, and how many threads it may use.

`train.blas` picks the library of the training step's products (mbtrain.gemm: numpy's own BLAS,
or oneMKL from the optional mkl package). `train.threads` limits BLAS threads for one run
(through threadpoolctl, for every BLAS loaded), so that parallel sweeps on one machine do not
oversubscribe its cores; 0 leaves the library's default.

    mbtrain fit configs/mnist.yaml --set train.threads=1 --set train.blas=numpy
"""

from __future__ import annotations

import contextlib
import functools

from mbtrain import gemm
from mbtrain.errors import ConfigError


@contextlib.contextmanager
def limit(threads: int, library: str = "numpy"):
    """A context in which the step's products run through `library` (mbtrain.gemm.select: auto,
    numpy, mkl) and BLAS uses at most `threads` threads (0: leave the default).

    Raises ConfigError (train.blas) for mkl where the mkl package is missing.
    """
    check_library(library)
    with gemm.using(library) as selected, contextlib.ExitStack() as stack:   # MKL loaded before
        if selected == "mkl" or threads:                                      # threadpoolctl looks
            from threadpoolctl import ThreadpoolController
            controller = ThreadpoolController()
            if selected == "mkl":
                # numpy's BLAS keeps only the small calls (dot products, sums, small products); on one
                # thread they wake no pool to compete with MKL's threads, which spin after each product
                stack.enter_context(controller.select(internal_api="openblas").limit(limits=1))
                if threads:
                    stack.enter_context(controller.select(internal_api="mkl").limit(limits=threads))
            else:
                stack.enter_context(controller.limit(limits=threads, user_api="blas"))
        yield


def check_library(library: str) -> str:
    """The library train.blas = `library` selects here ("numpy" or "mkl"); ConfigError where it
    cannot (mkl without the mkl package, or an unknown name)."""
    try:
        return gemm.resolve(library)
    except ValueError as e:
        raise ConfigError(f"train.blas = {library}: {e}; allowed: auto, numpy, mkl") from None


def for_checkpoint(train, threads: int | None = None) -> tuple[int, str]:
    """(threads, library) to evaluate or predict with a checkpoint whose config's train section is
    `train`: `threads` when given (`--threads`), else its train.threads; its train.blas, with mkl
    read as auto (MKL where it loads here, numpy's BLAS elsewhere: a checkpoint trained with MKL
    is evaluated on any machine). For limit()."""
    return (train.threads if threads is None else threads, "auto" if train.blas == "mkl" else train.blas)


def with_config_threads(fn):
    """Decorate fn(cfg, ...) to run under limit(cfg.train.threads, cfg.train.blas)."""
    @functools.wraps(fn)
    def wrapper(cfg, *args, **kwargs):
        with limit(cfg.train.threads, cfg.train.blas):
            return fn(cfg, *args, **kwargs)
    return wrapper


def info() -> dict:
    """The BLAS of the step's products (numpy's, or MKL when mbtrain.gemm selected it): library,
    version, CPU architecture and current thread count."""
    from threadpoolctl import threadpool_info
    found = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    if gemm.selected() == "mkl":
        mine = [i for i in found if i.get("internal_api") == "mkl"]
    else:
        mine = [i for i in found if "numpy" in i.get("filepath", "")] or found
    if not mine:
        return {"library": "unknown", "version": None, "threads": None, "architecture": None}
    i = mine[0]
    return {"library": i.get("internal_api"), "version": i.get("version"),
            "threads": i.get("num_threads"), "architecture": i.get("architecture")}
