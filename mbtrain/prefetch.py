"""Background prefetch: a thread prepares the next batches (gather, cast, scale) while one trains.

The thread runs exactly the jobs the loop would run itself, in the same order, into a
ring of depth + 2 buffers (depth waiting in the queue, one being filled, one in use), so
the batches are bit-identical with or without it and a resumed run stays exact. A batch
stays valid until the next one is requested, as without prefetch. numpy releases the GIL
while it copies, casts and reads pages, so the thread overlaps the training step.

    mbtrain fit configs/mnist.yaml --set data.prefetch=on
"""

from __future__ import annotations

import os
import queue
import threading

DEPTH = 2
_DONE = object()


# Below this much batch data, a background thread gained nothing on this shared 2-CPU machine:
# Nielsen's batch 10 (31 KB) trained no faster with it. The thread hands batches over
# data.PREFETCH_CHUNK_BYTES (2 MiB) at a time; with one batch per hand-over, A's batch 64 of
# MNIST (203 KB) had trained 10-20 % slower with prefetch, and now trains 12 % faster
# (whole steps alternated in one process, paired medians of 15 rounds; README, Data at scale).
MIN_BATCH_BYTES = 1 << 16


def enabled(setting: str, file_backed: bool, threads: int = 0, batch_bytes: int = 0) -> bool:
    """data.prefetch: on, off, or auto = on when this process may run on more than one CPU and either
    the training data is file-backed (memory-mapped), or train.threads leaves a CPU free for the
    thread and a batch holds at least MIN_BATCH_BYTES.

    Reading rows from a file can wait on the disk, with the GIL released, so overlapping it with
    the step pays. Gathering from memory overlaps too when a core would otherwise idle, but only
    for batches big enough to outweigh the hand-over; with every core given to BLAS (threads 0,
    the default) the thread would compete with it.
    """
    if setting in ("on", "off"):
        return setting == "on"
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:                          # not Linux
        cpus = os.cpu_count() or 1
    if cpus <= 1:
        return False
    return file_backed or (0 < threads < cpus and batch_bytes >= MIN_BATCH_BYTES)


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def prefetched(jobs, fill, depth: int = DEPTH):
    """Yield fill(job, slot) for each job, computed ahead in a background thread.

    jobs: an iterator of work items; fill(job, slot) prepares one batch in buffer slot
    `slot` (0 .. depth + 1) and returns it. Exceptions in the thread are raised here.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for i, job in enumerate(jobs):
                if stop.is_set() or not put(fill(job, i % (depth + 2))):
                    return
            put(_DONE)
        except BaseException as e:                  # handed to the consumer, raised there
            put(_Failed(e))

    thread = threading.Thread(target=work, name="mbtrain-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:                                        # also when the loop stops early
        stop.set()
        thread.join()
