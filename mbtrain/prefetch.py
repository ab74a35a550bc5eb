"""Background prefetch: a worker prepares the next batches (gather, cast, scale) while one trains.

The worker runs exactly the jobs the loop would run itself, in the same order, into a
ring of depth + 2 buffers (depth waiting, one being filled, one in use), so the batches are
bit-identical with or without it and a resumed run stays exact. A batch stays valid until
the next one is requested, as without prefetch.

The worker (data.prefetch_worker) is a forked child process where os.fork exists (Linux), a
thread elsewhere. The child fills a ring in memory shared with the training process and
hands over 8-byte receipts through a pipe; nothing is pickled. Unlike the thread it shares no
GIL with the step (numpy releases the GIL while it copies and casts, but the thread takes it
between its calls and the step may wait for it: the likely cost, not measured apart). At
bench setting A (784-100-10, batch 64, one BLAS thread) the step on the thread's batches took
1.14-1.23x its time on one fixed batch, on the process's 1.02-1.10x (/work/notes/s14/procpf.py,
three.py: alternated rounds), and `mbtrain bench` gave 0.70-0.72 of the GEMM bound with the
process, 0.59-0.69 with the thread (four alternated pairs, benchab.sh; README, Data at scale).

    mbtrain fit configs/mnist.yaml --set data.prefetch=on
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import mmap
import os
import queue
import signal
import struct
import sys
import threading
import warnings

import numpy as np

DEPTH = 2
_DONE = object()


# Below this much batch data, a background thread gained nothing on this shared 2-CPU machine:
# Nielsen's batch 10 (31 KB) trained no faster with it. The thread hands batches over
# data.PREFETCH_CHUNK_BYTES (2 MiB) at a time; with one batch per hand-over, A's batch 64 of
# MNIST (203 KB) had trained 10-20 % slower with prefetch, and now trains 12 % faster
# (whole steps alternated in one process, paired medians of 15 rounds; README, Data at scale).
# A process worker has no such floor: Nielsen's step took 0.88 of its time without prefetch
# (the thread's 0.96; /work/notes/s14/pfab3.py, 20 alternated rounds of 3,000 steps).
MIN_BATCH_BYTES = 1 << 16


def enabled(setting: str, file_backed: bool, threads: int = 0, batch_bytes: int = 0,
            worker: str = "thread") -> bool:
    """data.prefetch: on, off, or auto = on when this process may run on more than one CPU and either
    the training data is file-backed (memory-mapped), or train.threads leaves a CPU free for the
    worker ("process" or "thread", from worker()) and, for a thread, a batch holds at least
    MIN_BATCH_BYTES.

    Reading rows from a file can wait on the disk, so overlapping it with the step pays. Gathering
    from memory overlaps too when a core would otherwise idle, but only for batches big enough to
    outweigh the hand-over; with every core given to BLAS (threads 0, the default) the worker
    would compete with it.
    """
    if setting in ("on", "off"):
        return setting == "on"
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:                          # not Linux
        cpus = os.cpu_count() or 1
    if cpus <= 1:
        return False
    return file_backed or (0 < threads < cpus and (worker == "process" or batch_bytes >= MIN_BATCH_BYTES))


WORKERS = ("auto", "process", "thread")


def can_fork() -> bool:
    """True where a forked child process can prefetch: os.fork on Linux (macOS's system libraries
    are not fork-safe; Windows has no fork)."""
    return hasattr(os, "fork") and sys.platform.startswith("linux")


def worker(setting: str) -> str:
    """data.prefetch_worker: "process" or "thread". auto and process give a process where can_fork(),
    a thread elsewhere (the batches are the same either way)."""
    if setting not in WORKERS:
        raise ValueError(f"unknown prefetch worker {setting!r}: allowed {', '.join(WORKERS)}")
    return "process" if setting != "thread" and can_fork() else "thread"


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


# ---------------------------------------------------------------- a forked child process

_END, _FAIL = -1, -2                # the child's last receipt: all jobs done, or one failed
_RECEIPT = struct.Struct("<q")
_COMMAND = struct.Struct("<qq")     # a run's arguments: (epoch, first step)
_PARENT_ENDS: set[int] = set()      # this process's pipe ends of live children: a new child closes them


def shared_arrays(specs: list[tuple[tuple[int, ...], np.dtype]]) -> list[np.ndarray]:
    """Zeroed arrays of the given (shape, dtype) in one anonymous shared mapping, each page-aligned:
    what a child forked after this writes into them, this process sees."""
    page = mmap.PAGESIZE
    sizes = [-(-int(np.prod(shape)) * np.dtype(dtype).itemsize // page) * page for shape, dtype in specs]
    region = mmap.mmap(-1, max(sum(sizes), page))      # MAP_SHARED | MAP_ANONYMOUS
    arrays, at = [], 0
    for (shape, dtype), size in zip(specs, sizes):
        count = int(np.prod(shape))
        arrays.append(np.frombuffer(region, dtype, count, at).reshape(shape))
        at += size
    return arrays


class Forked:
    """A forked child process that runs each epoch's jobs ahead, into a ring of shared memory.

    run(jobs_for, args, fill, receive) yields receive(slot, fill(job, slot)) for each job of
    jobs_for(*args): fill writes one item into ring slot `slot` (0 .. depth + 1) of memory the
    caller made with shared_arrays before the first run, and returns a receipt, an int >= 0 (a row
    count); receive makes the item from the slot, here. An item stays valid until the next is
    requested. The child is forked at the first run and serves the runs after it in turn (after
    a fork the parent copies each page it writes: with a child forked per epoch A's step took
    1.02 of its time on the thread's batches, with one child 0.88-0.93; /work/notes/s14/three.py),
    so every run must pass the
    same functions: the child keeps the first ones, with the data they saw then. A run left early
    stops the child; the next run forks another.

    When a job fails in the child, or the child dies, this process stops it and runs the rest of
    the jobs itself, in the same order: a job that fails raises here, with its own exception.
    """

    def __init__(self, depth: int = DEPTH):
        self.slots = depth + 2
        self.pid = None

    def run(self, jobs_for, args: tuple[int, int], fill, receive):
        if self.pid is None:
            try:
                self._fork(jobs_for, fill)
            except OSError:                         # no fork now (memory, process limits): no prefetch
                pass
        done, finished = 0, False                   # items handed out; all jobs done
        try:
            if self.pid is not None and _send(self._commands, _COMMAND.pack(*args)):
                while True:
                    if done and not _send(self._free, b"\0"):    # the consumer moved past item done - 1
                        break
                    receipt = _receive(self._ready)
                    if receipt is None or receipt == _FAIL:
                        break
                    if receipt == _END:
                        finished = True
                        return
                    yield receive(done % self.slots, receipt)
                    done += 1
            self.close()                            # failed or gone: the rest here, from job `done`
            for i, job in enumerate(itertools.islice(jobs_for(*args), done, None), done):
                yield receive(i % self.slots, fill(job, i % self.slots))
            finished = True
        finally:
            if not finished:                        # left early: the child may be mid-run
                self.close()

    def _fork(self, jobs_for, fill) -> None:
        commands_r, commands_w = os.pipe()          # parent -> child: (epoch, first step) per run
        ready_r, ready_w = os.pipe()                # child -> parent: receipts
        free_r, free_w = os.pipe()                  # parent -> child: one byte per slot freed
        os.write(free_w, bytes(self.slots))         # every slot is free: the child fills them in turn
        parent, death_signal = os.getpid(), _death_signal()   # looked up here: the child loads nothing
        closing = [commands_w, ready_r, free_w, *_PARENT_ENDS]
        try:
            with warnings.catch_warnings():         # Python 3.12+ warns on forking a multi-threaded
                warnings.simplefilter("ignore", DeprecationWarning)   # process; the child runs only the jobs
                pid = os.fork()
        except OSError:
            for fd in (commands_r, commands_w, ready_r, ready_w, free_r, free_w):
                os.close(fd)
            raise
        if pid == 0:                                # the child: never returns
            _child(jobs_for, fill, self.slots, commands_r, ready_w, free_r, closing, parent, death_signal)
        for fd in (commands_r, ready_w, free_r):
            os.close(fd)
        self.pid, self._commands, self._ready, self._free = pid, commands_w, ready_r, free_w
        _PARENT_ENDS.update((commands_w, ready_r, free_w))

    def close(self) -> None:
        """Stop the child (if any) and close the pipes; the next run forks another."""
        if self.pid is None:
            return
        for fd in (self._commands, self._ready, self._free):
            _PARENT_ENDS.discard(fd)
            os.close(fd)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:                  # pragma: no cover - reaped elsewhere
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:                   # pragma: no cover
            pass
        self.pid = None

    def __del__(self):
        self.close()


def _child(jobs_for, fill, slots: int, commands_r: int, ready_w: int, free_r: int, closing: list[int],
           parent: int, death_signal):
    """The forked child's whole life: for each run, fill each job's slot when it is free and send
    the receipts; exit when the parent closes its ends or one job fails."""
    status = 0
    try:
        for fd in closing:
            os.close(fd)
        signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is the training loop's to handle
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if death_signal is not None:
            death_signal(1, signal.SIGKILL, 0, 0, 0)    # PR_SET_PDEATHSIG: killed with its parent
        if os.getppid() != parent:                      # the parent died before that
            return
        while True:
            command = _read_exactly(commands_r, _COMMAND.size)
            if command is None:                         # the parent closed its end: stop
                return
            for i, job in enumerate(jobs_for(*_COMMAND.unpack(command))):
                if not os.read(free_r, 1):
                    return
                try:
                    receipt = fill(job, i % slots)
                except BaseException:                   # the parent runs this job again, and raises
                    os.write(ready_w, _RECEIPT.pack(_FAIL))
                    return
                os.write(ready_w, _RECEIPT.pack(receipt))
            os.write(ready_w, _RECEIPT.pack(_END))
    except BaseException:
        status = 1
    finally:
        os._exit(status)                                # no atexit handlers, no flushing the parent's buffers


@functools.lru_cache(maxsize=1)
def _death_signal():
    """libc's prctl, or None: a forked child asks it for SIGKILL when its parent dies."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):                   # pragma: no cover - not Linux
        return None


def _send(fd: int, data: bytes) -> bool:
    try:
        os.write(fd, data)
        return True
    except OSError:                                     # the child is gone
        return False


def _read_exactly(fd: int, size: int) -> bytes | None:
    """size bytes from fd, or None at end of file."""
    data = b""
    while len(data) < size:
        part = os.read(fd, size - len(data))
        if not part:
            return None
        data += part
    return data


def _receive(fd: int) -> int | None:
    """The next receipt, or None when the child has gone without one."""
    try:
        data = _read_exactly(fd, _RECEIPT.size)
    except OSError:
        return None
    return None if data is None else _RECEIPT.unpack(data)[0]
