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


class _Loop:
    """A model, its optimizer and an endless stream of batches with prefetch on or off."""

    def __init__(self, cfg: Config, train_set: data.Dataset, prefetch: str):
        from mbtrain import optim, step
        from mbtrain.train import build_model, make_batches
        self.model = build_model(cfg)
        self.opt = optim.make(cfg.train, self.model.params, n_train=len(train_set))
        self.step = step.TrainStep(self.model, self.opt, cfg.train.clip_norm, cfg.train.fused_update)
        self.batches = make_batches(cfg, train_set, prefetch)
        self.stream = data.endless(self.batches)

    def run(self, steps: int) -> tuple[float, float]:
        """(seconds per step, seconds per step spent waiting for the batch) over `steps` steps."""
        waited = self.batches.wait_seconds
        start = time.perf_counter()
        for _ in range(steps):
            self.step(*next(self.stream))
        total = time.perf_counter() - start
        return total / steps, (self.batches.wait_seconds - waited) / steps


def measure(cfg: Config, train_set: data.Dataset, steps: int, repeats: int) -> dict:
    """{"off": {...}, "on": {...}}: step_ms, loader_ms and loader_share, medians over repeats."""
    loops = {setting: _Loop(cfg, train_set, setting) for setting in ("off", "on")}
    for loop in loops.values():                                    # warm-up: buffers, thread start
        loop.run(2)
    times = {setting: [] for setting in loops}
    try:
        for r in range(repeats):
            for setting in (("off", "on") if r % 2 == 0 else ("on", "off")):
                times[setting].append(loops[setting].run(steps))
    finally:
        for loop in loops.values():
            loop.stream.close()                                    # stops the prefetch thread
    result = {}
    for setting, pairs in times.items():
        step = statistics.median(p[0] for p in pairs)
        wait = statistics.median(p[1] for p in pairs)
        result[setting] = {"step_ms": 1e3 * step, "loader_ms": 1e3 * wait, "loader_share": wait / step}
    return result


def lines(loader: dict) -> list[str]:
    """Two table lines for `mbtrain bench`."""
    return [f"loader    prefetch {s}: step {v['step_ms']:.3f} ms, waiting for the batch {v['loader_ms']:.3f} ms "
            f"({100 * v['loader_share']:.1f}% of the step)" for s, v in loader.items()]
