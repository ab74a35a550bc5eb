"""How busy the machine is right now: one 256x1024x1024 float32 product on one BLAS thread.

Prints the median of 20 timings. On this project's 2-vCPU machine it takes 3.7-4.0 ms when
the shared host is quiet and 5-10 ms when it is busy, so a figure measured next to it can be
read against the load it ran under (benchmarks/measure.sh runs it at the start, middle and end).

    python benchmarks/probe.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits


def probe_ms(repeats: int = 20) -> float:
    """Median milliseconds of one (256, 1024) @ (1024, 1024) float32 product on one thread."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 1024), dtype=np.float32)
    b = rng.standard_normal((1024, 1024), dtype=np.float32)
    c = np.empty((256, 1024), np.float32)
    times = []
    with threadpool_limits(1):
        np.matmul(a, b, out=c)
        for _ in range(repeats):
            start = time.perf_counter()
            np.matmul(a, b, out=c)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


if __name__ == "__main__":
    print(f"probe: 256x1024x1024 float32 product, one thread: median {probe_ms():.2f} ms")
