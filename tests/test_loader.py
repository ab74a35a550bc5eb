"""The loader: shuffle orders, prefetch, streaming checks and normalization (issue 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import make_blobs
from mbtrain import checks, data, normalize, order, prefetch, streaming
from mbtrain.errors import DataError


def _batches(n=103, K=10, shuffle="full", prefetch=False, drop_last=False, seed=7, d=3, start=0,
             block_rows=8, buffer_rows=20, worker="auto"):
    x = np.arange(n * d, dtype=np.float32).reshape(n, d)       # row i holds 3i, 3i+1, 3i+2
    y = np.arange(n) % 4
    dataset = data.Dataset(x, y, "mem")
    if start:
        dataset, _ = data.Dataset(x, y, "mem", start, n).split(0)
    return data.Batches(dataset, K, drop_last, np.float64, 4, seed, shuffle, block_rows, buffer_rows,
                        prefetch, worker)


def _rows_seen(batches, epoch, first_step=0):
    """The sample rows of each batch, read back from the gathered features (x[i, 0] = 3i)."""
    return [(X[:, 0] / 3).astype(np.int64).copy() for X, _ in batches.epoch(epoch, first_step)]


@pytest.mark.parametrize("shuffle", order.SHUFFLES)
@pytest.mark.parametrize("n", [1, 7, 103, 1000])
def test_every_sample_exactly_once_per_epoch(shuffle, n):
    batches = _batches(n=n, shuffle=shuffle)
    for epoch in range(3):
        seen = np.concatenate(_rows_seen(batches, epoch))
        assert len(seen) == n
        assert np.array_equal(np.sort(seen), np.arange(n))


@pytest.mark.parametrize("shuffle", ["full", "blocks"])
def test_orders_are_seeded_reproducible_and_differ_between_epochs(shuffle):
    a, b = _batches(shuffle=shuffle), _batches(shuffle=shuffle)
    first = np.concatenate(_rows_seen(a, 0))
    assert np.array_equal(first, np.concatenate(_rows_seen(b, 0)))
    assert not np.array_equal(first, np.concatenate(_rows_seen(a, 1)))
    assert not np.array_equal(first, np.concatenate(_rows_seen(_batches(shuffle=shuffle, seed=8), 0)))
    assert not np.array_equal(first, np.arange(103))


def test_batch_rows_are_sorted_and_none_keeps_the_stored_order():
    for rows in _rows_seen(_batches(shuffle="full"), 0):
        assert np.all(np.diff(rows) > 0)
    assert np.array_equal(np.concatenate(_rows_seen(_batches(shuffle="none"), 0)), np.arange(103))


def test_full_shuffle_is_a_permutation_for_awkward_sizes():
    for n in (2, 3, 4, 5, 17, 1 << 10, (1 << 10) + 1, 65537, 70001):
        perm = order.epoch_order(0, 0, n, "full")
        assert np.array_equal(np.sort(perm), np.arange(n))


def test_blocks_keep_reads_within_a_few_blocks_per_buffer():
    n, block, buffer = 1000, 16, 64                 # a window of 64 positions spans 4 blocks' rows
    rows = order.epoch_order(3, 0, n, "blocks", block, buffer)
    assert np.array_equal(np.sort(rows), np.arange(n))
    windows_of_block = {}
    for w in range(0, n, buffer):
        blocks = np.unique(rows[w:w + buffer] // block)
        # 4 whole blocks, or 5 when the short tail block (1000 = 62 * 16 + 8) shifts the layout
        assert len(blocks) <= buffer // block + 1
        for b in blocks:
            windows_of_block.setdefault(int(b), []).append(w // buffer)
    # a block is read within one window, or two neighbouring ones
    assert all(len(ws) <= 2 and ws[-1] - ws[0] <= 1 for ws in windows_of_block.values())
    assert len(windows_of_block) == 63


def test_resume_from_a_step_gives_the_same_batches():
    for shuffle in order.SHUFFLES:
        full = _rows_seen(_batches(shuffle=shuffle), 2)
        resumed = _rows_seen(_batches(shuffle=shuffle), 2, first_step=4)
        assert all(np.array_equal(a, b) for a, b in zip(full[4:], resumed))


WORKERS = ["thread"] + (["process"] if prefetch.can_fork() else [])


@pytest.mark.parametrize("worker", WORKERS)
@pytest.mark.parametrize("shuffle", order.SHUFFLES)
def test_prefetch_gives_identical_batches(shuffle, worker):
    plain = [(X.copy(), Y.copy()) for X, Y in _batches(shuffle=shuffle).epoch(1, 3)]
    batches = _batches(shuffle=shuffle, prefetch=True, worker=worker)
    assert batches.worker == worker
    ahead = [(X.copy(), Y.copy()) for X, Y in batches.epoch(1, 3)]
    assert len(plain) == len(ahead) == 8
    for (X1, Y1), (X2, Y2) in zip(plain, ahead):
        assert np.array_equal(X1, X2) and np.array_equal(Y1, Y2)


@pytest.mark.parametrize("worker", WORKERS)
def test_prefetch_buffer_stays_valid_until_the_next_batch(worker, monkeypatch):
    monkeypatch.setattr(data, "PREFETCH_CHUNK_BYTES", 240)      # one batch per hand-over: the ring turns over
    batches = _batches(prefetch=True, worker=worker)
    for X, _ in batches.epoch(0):
        before = X.copy()
        threading.Event().wait(0.002)                # give the worker time to run ahead
        assert np.array_equal(X, before)


def test_prefetch_thread_stops_when_the_loop_stops_early():
    before = threading.active_count()
    batches = _batches(n=1000, prefetch=True, worker="thread")
    for i, _ in enumerate(batches.epoch(0)):
        if i == 2:
            break
    assert threading.active_count() == before


def _gone(pid: int) -> bool:
    """True when process pid has exited (reaped, or a zombie whose parent has not reaped it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not prefetch.can_fork(), reason="a prefetch process needs os.fork on Linux")
def test_prefetch_process_serves_every_epoch_and_stops_when_the_loop_stops_early(monkeypatch):
    monkeypatch.setattr(data, "PREFETCH_CHUNK_BYTES", 480)      # two batches per hand-over
    batches = _batches(n=1000, prefetch=True, worker="process")
    plain = _batches(n=1000)
    children = set()
    for epoch, first in ((0, 0), (1, 0), (2, 37)):            # one child for all of them; a resumed epoch
        for (X, Y), (X0, Y0) in zip(batches.epoch(epoch, first), plain.epoch(epoch, first), strict=True):
            assert np.array_equal(X, X0) and np.array_equal(Y, Y0)
            children.add(batches._forked.pid)
    assert len(children) == 1 and not _gone(children.pop())
    for i, _ in enumerate(batches.epoch(3)):
        if i == 0:
            child = batches._forked.pid
        if i == 2:
            break
    assert batches._forked.pid is None and _gone(child)       # stopped and reaped
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)
    X0 = [X.copy() for X, _ in plain.epoch(4)]                  # the next epoch forks another child
    assert all(np.array_equal(X, X1) for X, X1 in zip((X for X, _ in batches.epoch(4)), X0))
    batches.close()


@pytest.mark.skipif(not prefetch.can_fork(), reason="a prefetch process needs os.fork on Linux")
def test_a_killed_prefetch_process_leaves_the_epoch_to_the_loop(monkeypatch):
    monkeypatch.setattr(data, "PREFETCH_CHUNK_BYTES", 240)      # one batch per hand-over
    batches, plain = _batches(n=500, prefetch=True, worker="process"), _batches(n=500)
    seen = []
    for i, (X, Y) in enumerate(batches.epoch(1)):
        if i == 5:
            os.kill(batches._forked.pid, signal.SIGINT)          # Ctrl-C is the loop's: the child goes on
            time.sleep(0.05)
            assert batches._forked.pid is not None and not _gone(batches._forked.pid)
        if i == 9:
            os.kill(batches._forked.pid, signal.SIGKILL)
        seen.append((X.copy(), Y.copy()))
    assert batches._forked.pid is None                          # gathered here from batch ~10 on
    want = [(X.copy(), Y.copy()) for X, Y in plain.epoch(1)]
    assert len(seen) == len(want) == 50
    assert all(np.array_equal(a, c) and np.array_equal(b, d) for (a, b), (c, d) in zip(seen, want))


@pytest.mark.skipif(not prefetch.can_fork(), reason="a prefetch process needs os.fork on Linux")
def test_a_prefetch_process_dies_with_its_parent(tmp_path):
    script = (
        "import os, signal, sys, numpy as np\n"
        "from mbtrain import data\n"
        "data.PREFETCH_CHUNK_BYTES = 120\n"                      # one batch per hand-over: the child waits
        "x = np.zeros((4000, 3), np.float32); y = np.zeros(4000, np.int64)\n"
        "b = data.Batches(data.Dataset(x, y, 'mem'), 10, False, np.float32, 2, 0, prefetch=True)\n"
        "it = b.epoch(0); next(it)\n"
        "print(b._forked.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr
    child = int(out.stdout)
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _gone(child)


@pytest.mark.skipif(not prefetch.can_fork(), reason="a prefetch process needs os.fork on Linux")
def test_without_a_fork_the_loop_gathers_its_batches_itself(monkeypatch):
    def refuse():
        raise BlockingIOError(11, "Resource temporarily unavailable")   # fork's EAGAIN
    monkeypatch.setattr(prefetch.os, "fork", refuse)
    batches, plain = _batches(prefetch=True, worker="process"), _batches()
    got = [(X.copy(), Y.copy()) for X, Y in batches.epoch(2)]
    want = [(X.copy(), Y.copy()) for X, Y in plain.epoch(2)]
    assert len(got) == len(want) == 11 and batches._forked.pid is None
    assert all(np.array_equal(a, c) and np.array_equal(b, d) for (a, b), (c, d) in zip(got, want))


@pytest.mark.parametrize("worker", WORKERS)
def test_prefetch_raises_the_workers_error(worker):
    batches = _batches(prefetch=True, worker=worker)
    batches.data.y = batches.data.y.astype(np.int64) + 10      # labels past the 4 classes
    with pytest.raises(DataError, match=r"mem: a label among rows \d+\.\.\d+ is outside \[0, 4\)"):
        list(batches.epoch(0))
    assert worker == "thread" or batches._forked.pid is None


def test_prefetch_worker_is_a_process_where_fork_is_safe(monkeypatch):
    assert prefetch.worker("thread") == "thread"
    monkeypatch.setattr(prefetch, "can_fork", lambda: True)
    assert prefetch.worker("auto") == prefetch.worker("process") == "process"
    monkeypatch.setattr(prefetch, "can_fork", lambda: False)    # macOS, Windows
    assert prefetch.worker("auto") == prefetch.worker("process") == "thread"
    with pytest.raises(ValueError, match="unknown prefetch worker 'fork'"):
        prefetch.worker("fork")


# ---------------------------------------------------------------- data checks

def test_checks_name_the_position_of_bad_values(monkeypatch):
    monkeypatch.setattr(streaming, "CHUNK_BYTES", 64)          # many chunks: positions must add up
    x, y = make_blobs(50, 4, 3)
    bad_y = y.copy()
    bad_y[37] = 3
    with pytest.raises(DataError, match=r"f: label y\[37\] = 3 is outside \[0, 3\)"):
        checks.check(x, bad_y, "f", [4, 3], "training")
    bad_x = x.copy()
    bad_x[41, 2] = np.inf
    with pytest.raises(DataError, match=r"f: x\[41\] feature 2 is inf"):
        checks.check(bad_x, y, "f", [4, 3], "training")
    checks.check(bad_x, bad_y, "f", [4, 3], "training", scan=False)   # data.check: false
    with pytest.raises(DataError, match=r"x has 50 samples but y has 49"):
        checks.check(x, y[:49], "f", [4, 3], "training", scan=False)
    with pytest.raises(DataError, match=r"5 features .* model.layers\[0\] = 4"):
        checks.check(np.zeros((50, 5), np.float32), y, "f", [4, 3], "training", scan=False)
    with pytest.raises(DataError, match=r"label y\[2\] = 1.5 is not a whole class number"):
        checks.check(x[:4], np.array([0, 1, 1.5, 2]), "f", [4, 3], "training")


# ---------------------------------------------------------------- normalization

@pytest.mark.parametrize("mode", ["unit", "standardize"])
def test_normalization_statistics_match_numpy_on_the_training_rows(monkeypatch, mode):
    monkeypatch.setattr(streaming, "CHUNK_BYTES", 100)         # force many merged chunks
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((300, 5)) * [1, 10, 0.1, 3, 0] + [0, 5, -2, 100, 7]).astype(np.float32)
    norm = normalize.fit(x, 20, 250, mode, None)
    rows = x[20:250].astype(np.float64)
    if mode == "unit":
        lo, hi = rows.min(0), rows.max(0)
        assert np.allclose(norm.shift, lo) and np.allclose(norm.scale[:4], 1 / (hi - lo)[:4])
    else:
        assert np.allclose(norm.shift, rows.mean(0), rtol=1e-12, atol=1e-12)
        assert np.allclose(norm.scale[:4], 1 / rows.std(0)[:4], rtol=1e-10)
    assert norm.scale[4] == 1.0                                  # constant feature: left unscaled
    X = x[20:250].copy()
    norm.apply(X)
    assert X.dtype == np.float32
    if mode == "standardize":
        assert np.allclose(X[:, :4].mean(0), 0, atol=1e-4) and np.allclose(X[:, :4].std(0), 1, atol=1e-4)
    else:
        assert np.allclose(X.min(0)[:4], 0, atol=1e-6) and np.allclose(X.max(0)[:4], 1, atol=1e-6)


def test_uint8_pixels_are_scaled_before_the_statistics():
    x = np.array([[0, 255], [51, 255], [102, 255]], np.uint8)
    norm = normalize.fit(x, 0, 3, "standardize", 1 / 255)
    assert np.allclose(norm.shift, [0.2, 1.0])
    dataset = data.Dataset(x, np.array([0, 1, 0]), "px")
    dataset.normalization = norm
    X, Y = np.empty((3, 2), np.float32), np.empty((3, 2), np.float32)
    dataset.gather(np.arange(3), X, Y)
    expected = (x / 255 - [0.2, 1.0]) / [np.std([0, 0.2, 0.4]), 1.0]
    assert np.allclose(X, expected, atol=1e-6)


def test_loader_share_is_measured_with_and_without_prefetch(tiny_config):
    from mbtrain import loadertime
    from mbtrain.config import load_config
    from mbtrain.train import load_splits
    cfg = load_config(tiny_config, ["train.threads=1"])
    result = loadertime.measure(cfg, load_splits(cfg)[0], steps=5, repeats=2)
    assert set(result) == {"off", "on"}
    for v in result.values():
        assert 0 <= v["loader_ms"] <= v["step_ms"]      # 0 when every measured step found its batch gathered
        assert v["loader_share"] == pytest.approx(v["loader_ms"] / v["step_ms"])
    text = loadertime.lines(result)
    assert text[0].startswith("loader    prefetch off: step") and "% of the step" in text[1]


@pytest.mark.parametrize("shuffle", ["full", "blocks", "none"])
@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_gathered_in_chunks_equal_batches_gathered_one_by_one(shuffle, drop_last, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (203, 6), dtype=np.uint8)
    y = rng.integers(0, 4, 203)
    ds = data.Dataset(x, y, "chunks", start=5)                 # rows 5..202: 198 samples
    def collect(chunk_bytes):
        monkeypatch.setattr(data, "CHUNK_BYTES", chunk_bytes)
        b = data.Batches(ds, 16, drop_last, np.float32, 4, seed=1, shuffle=shuffle, block_rows=8, buffer_rows=32)
        assert b.batches_per_chunk() == max(1, chunk_bytes // (16 * 6 * 4))
        return [(X.copy(), Y.copy()) for X, Y in b.epoch(2, first_step=1)]
    one_by_one, chunked = collect(1), collect(16 * 6 * 4 * 5)    # 1 batch a chunk, 5 batches a chunk
    assert len(one_by_one) == len(chunked) == (198 // 16 if drop_last else -(-198 // 16)) - 1
    for (X1, Y1), (X2, Y2) in zip(one_by_one, chunked):
        assert np.array_equal(X1, X2) and np.array_equal(Y1, Y2)
    seen = np.concatenate([X[:, 0] for X, _ in chunked])       # every row once (drop_last: but the tail)
    assert len(seen) == (len(one_by_one) * 16 if drop_last else 198 - 16)


def test_prefetch_auto_needs_a_spare_cpu_and_big_enough_batches(monkeypatch):
    from mbtrain import prefetch
    monkeypatch.setattr(prefetch.os, "sched_getaffinity", lambda pid: {0, 1})
    big = prefetch.MIN_BATCH_BYTES
    assert prefetch.enabled("on", False) and not prefetch.enabled("off", True)
    assert prefetch.enabled("auto", True)                              # file-backed data
    assert prefetch.enabled("auto", False, threads=1, batch_bytes=big)  # a CPU left for the thread
    assert not prefetch.enabled("auto", False, threads=0, batch_bytes=big)      # BLAS has every CPU
    assert not prefetch.enabled("auto", False, threads=2, batch_bytes=big)
    assert not prefetch.enabled("auto", False, threads=1, batch_bytes=big - 1)  # a thread's hand-over costs more
    assert prefetch.enabled("auto", False, threads=1, batch_bytes=1, worker="process")    # a process's does not
    assert not prefetch.enabled("auto", False, threads=0, batch_bytes=big, worker="process")
    monkeypatch.setattr(prefetch.os, "sched_getaffinity", lambda pid: {0})
    assert not prefetch.enabled("auto", True)                          # one CPU: nothing to overlap


@pytest.mark.parametrize("mode", ["none", "unit", "standardize"])
def test_entry_bound_holds_for_every_batch_of_uint8_pixels(mode):
    """Dataset.entry_bound(): every |x| of every gathered batch, after scaling and normalization."""
    from mbtrain import normalize
    from mbtrain.data import Dataset
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, (300, 12), dtype=np.uint8)
    x[:, 3] = 7                                           # a constant feature (scale 1)
    x[:150, 5] = rng.integers(250, 256, 150)              # a feature of mostly bright pixels
    d = Dataset(x, rng.integers(0, 3, 300), "pixels")
    train = Dataset(x, d.y, "pixels", 0, 100)             # statistics from a part: others may exceed them
    d.normalization = normalize.fit(x, 0, 100, mode, train.scale)
    bound = d.entry_bound()
    X, Y = np.empty((300, 12), np.float32), np.empty((300, 3), np.float32)
    d.gather(np.arange(300), X, Y)
    assert bound is not None and np.abs(X).max() <= bound
    if mode == "none":
        assert bound == pytest.approx(1.0, rel=2e-3)


def test_entry_bound_is_unknown_for_float_data():
    from mbtrain.data import Dataset
    x = np.random.default_rng(9).standard_normal((20, 4)).astype(np.float32)
    assert Dataset(x, np.zeros(20, np.int64), "floats").entry_bound() is None
