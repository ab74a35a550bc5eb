"""A test hook that stops the process at a named point, so tests can SIGKILL it at a precise moment.

Inert in normal use: unless one of the two environment variables below is set, `at()` returns
at once. Tests set them on a `python -m mbtrain fit ...` subprocess:

    MBTRAIN_TEST_PAUSE_AT=POINT:N   the N-th time POINT is reached, print `PAUSED POINT N` on
                                    stderr and sleep, waiting for the test's os.kill(pid, SIGKILL)
    MBTRAIN_TEST_KILL_AT=POINT:N    the N-th time POINT is reached, SIGKILL this process

Points: `step` (after an optimizer update), `epoch` (after an epoch's metrics and checkpoints
are written), and inside checkpoint.write_atomic, per file name: `write-open:NAME` (temp file
created), `write-data:NAME` (data written, not yet fsynced), `write-synced:NAME` (fsynced, not
yet renamed), `write-replaced:NAME` (renamed into place, folder not yet fsynced).

    MBTRAIN_TEST_PAUSE_AT=write-data:last.npz:3 mbtrain fit tiny.yaml --out runs/t
"""

from __future__ import annotations

import os
import signal
import sys
import time

_PAUSE = os.environ.get("MBTRAIN_TEST_PAUSE_AT")
_KILL = os.environ.get("MBTRAIN_TEST_KILL_AT")
_counts: dict[str, int] = {}


def at(point: str) -> None:
    """Mark that the program reached `point`; pause or die there when a test asked for it."""
    if not (_PAUSE or _KILL):
        return
    _counts[point] = n = _counts.get(point, 0) + 1
    if _KILL == f"{point}:{n}":
        os.kill(os.getpid(), signal.SIGKILL)
    if _PAUSE == f"{point}:{n}":
        print(f"PAUSED {point} {n}", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)
