"""The BLAS under numpy: which library runs the matrix products, and how many threads it may use.

`train.threads` limits BLAS threads for one run (through threadpoolctl), so that parallel
sweeps on one machine do not oversubscribe its cores; 0 leaves the library's default.

    mbtrain fit configs/mnist.yaml --set train.threads=1
"""

from __future__ import annotations

import contextlib
import functools


def limit(threads: int):
    """A context in which BLAS uses at most `threads` threads (0: leave the default)."""
    if not threads:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=threads, user_api="blas")


def with_config_threads(fn):
    """Decorate fn(cfg, ...) to run under limit(cfg.train.threads)."""
    @functools.wraps(fn)
    def wrapper(cfg, *args, **kwargs):
        with limit(cfg.train.threads):
            return fn(cfg, *args, **kwargs)
    return wrapper


def info() -> dict:
    """numpy's BLAS: library, version, CPU architecture and current thread count."""
    from threadpoolctl import threadpool_info
    found = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    mine = [i for i in found if "numpy" in i.get("filepath", "")] or found
    if not mine:
        return {"library": "unknown", "version": None, "threads": None, "architecture": None}
    i = mine[0]
    return {"library": i.get("internal_api"), "version": i.get("version"),
            "threads": i.get("num_threads"), "architecture": i.get("architecture")}
