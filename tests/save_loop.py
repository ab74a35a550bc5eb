"""Run as a script by test_atomic_save.py: save generation after generation of a checkpoint to
DIR/last.npz until killed, printing `saving K SHA256` before each write and `saved K` after."""

import hashlib
import sys

import numpy as np

from mbtrain import checkpoint
from mbtrain.config import load_config

LAYERS = [64, 256, 256, 3]     # ~0.6 MB with momentum state, so a save takes a while


def generation(k: int) -> checkpoint.Checkpoint:
    cfg = load_config(None, base={"model": {"layers": LAYERS}, "train": {"momentum": 0.9}})
    params = []
    for n, m in zip(LAYERS[:-1], LAYERS[1:]):
        params += [np.full((m, n), k, np.float32), np.full(m, -k, np.float32)]
    velocity = {f"velocity{i}": p * 0.5 for i, p in enumerate(params)}
    return checkpoint.Checkpoint(params, velocity, cfg, {"epoch": k, "step": k})


if __name__ == "__main__":
    path = sys.argv[1] + "/last.npz"
    for k in range(1, 1_000_000):
        data = checkpoint.to_bytes(generation(k))
        print(f"saving {k} {hashlib.sha256(data).hexdigest()}", flush=True)
        checkpoint.write_atomic(path, data)
        print(f"saved {k}", flush=True)
