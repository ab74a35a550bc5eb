"""Helpers for tests that run `python -m mbtrain` as a real subprocess and SIGKILL it."""

from __future__ import annotations

import csv
import os
import queue
import signal
import subprocess
import sys
import threading

import numpy as np

from conftest import ROOT

TIMEOUT = 120


def mbtrain(*args, env_extra=None, cwd=None, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    """Run `python -m mbtrain ARGS` to completion."""
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "mbtrain", *args], capture_output=True, text=True,
                          env=env, cwd=cwd or ROOT, timeout=timeout)


def kill_at_pause(*args, pause_at: str, timeout=TIMEOUT) -> str:
    """Start `python -m mbtrain ARGS` with MBTRAIN_TEST_PAUSE_AT, SIGKILL it once paused there.

    Returns the stderr seen before the kill. Fails if the process ends without pausing.
    """
    env = dict(os.environ, MBTRAIN_TEST_PAUSE_AT=pause_at)
    proc = subprocess.Popen([sys.executable, "-m", "mbtrain", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stderr] + [lines.put(None)],
                     daemon=True).start()
    seen = []
    try:
        while True:
            line = lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"process ended (exit {proc.wait()}) without pausing at "
                                     f"{pause_at}:\n{''.join(seen)}")
            seen.append(line)
            if line.startswith("PAUSED "):
                break
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=timeout) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return "".join(seen)


def npz_arrays(path: str) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def metrics_rows(run_dir: str, drop=("seconds",)) -> list[dict]:
    """metrics.csv rows without the wall-clock column (the only one that may differ)."""
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]
