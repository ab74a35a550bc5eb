"""The loader's share of the training step, with and without background prefetch (for `mbtrain bench`).

Two trainers run the same steps on the same batches (the config's data.shuffle and
normalization), one with data.prefetch off, one with it on; each repeat alternates which
goes first. The loader's share is the time the loop waits for its next batch (gather,
cast, scale, normalize when not prefetched; only the hand-over when prefetched) over the
whole step time.

    mbtrain bench configs/mnist.yaml --json | jq .loader
"""

from __future__ import annotations

import statistics
import time

from mbtrain import data
from mbtrain.config import Config


def measure(cfg: Config, train_set: data.Dataset, steps: int, repeats: int) -> dict:
    """{"off": {...}, "on": {...}}: step_ms, loader_ms and loader_share, medians over repeats.

    The trainers are `mbtrain bench`'s own (bench.Trainer), so these steps are the ones it times.
    """
    from mbtrain.bench import Trainer
    trainers = {setting: Trainer(cfg, train_set, False, setting) for setting in ("off", "on")}
    for trainer in trainers.values():                              # warm-up: buffers, thread start
        _run(trainer, 2)
    times = {setting: [] for setting in trainers}
    try:
        for r in range(repeats):
            for setting in (("off", "on") if r % 2 == 0 else ("on", "off")):
                times[setting].append(_run(trainers[setting], steps))
    finally:
        for trainer in trainers.values():
            trainer.close()                                        # stops the prefetch worker
    result = {}
    for setting, pairs in times.items():
        step = statistics.median(p[0] for p in pairs)
        wait = statistics.median(p[1] for p in pairs)
        result[setting] = {"step_ms": 1e3 * step, "loader_ms": 1e3 * wait, "loader_share": wait / step}
    return result


def _run(trainer, steps: int) -> tuple[float, float]:
    """(seconds per step, seconds per step spent waiting for the batch) over `steps` steps."""
    waited = trainer.batches.wait_seconds
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    total = time.perf_counter() - start
    return total / steps, (trainer.batches.wait_seconds - waited) / steps


def lines(loader: dict) -> list[str]:
    """Two table lines for `mbtrain bench`."""
    return [f"loader    prefetch {s}: step {v['step_ms']:.3f} ms, waiting for the batch {v['loader_ms']:.3f} ms "
            f"({100 * v['loader_share']:.1f}% of the step)" for s, v in loader.items()]
