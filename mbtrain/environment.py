"""What a run ran on: Python and package versions, the BLAS numpy uses and its thread settings.

Recorded in each run directory's run.json so a result can be traced to its software.

    mbtrain fit configs/mnist.yaml && cat runs/mnist-*/run.json
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

PACKAGES = ("mbtrain", "numpy", "typer", "pyyaml", "tqdm", "threadpoolctl", "matplotlib", "mkl")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def versions() -> dict:
    """{package: version} for Python and each installed package of PACKAGES (absent ones left out)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def blas(threads_limit: int = 0, library: str = "numpy") -> dict:
    """The BLAS numpy was built against, the one loaded now (library, version, default thread
    count, via mbtrain.blas), the library train.blas (`library`) runs the step's products through
    ("numpy" or "mkl", mbtrain.gemm), the limit train.threads puts on it for the run (0: none) and
    the thread-count environment variables that steer it."""
    from mbtrain import gemm
    from mbtrain import blas as blas_mod
    try:
        loaded = blas_mod.info()
    except ImportError:                 # threadpoolctl missing: build information only
        loaded = None
    try:
        products = gemm.resolve(library)
    except ValueError:                  # train.blas = mkl without it: the run stops with a ConfigError
        products = None
    return {"build": _numpy_build_blas(), "loaded": loaded, "products": products, "threads_limit": threads_limit,
            "thread_variables": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ}}


def _numpy_build_blas() -> dict:
    import numpy as np
    try:
        config = np.show_config(mode="dicts")          # numpy >= 1.26
    except TypeError:
        return {}
    dep = (config or {}).get("Build Dependencies", {}).get("blas", {})
    keep = ("name", "version", "openblas configuration")
    return {k: dep[k] for k in keep if k in dep}


def describe(threads_limit: int = 0, library: str = "numpy") -> dict:
    """Everything above in one mapping, plus the platform."""
    return {"versions": versions(), "blas": blas(threads_limit, library), "platform": platform.platform(),
            "executable": sys.executable}
