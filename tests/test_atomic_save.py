"""Crash-safe saves: SIGKILL at random moments while saving, a full disk, a read-only folder.

Whatever happens, checkpoints/last.npz is a whole checkpoint: the new one, or the previous
one byte for byte; a failed write leaves no temp file and says why in one line.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from conftest import ROOT
from killing import mbtrain
from mbtrain import checkpoint
from mbtrain.errors import CheckpointError

HERE = os.path.dirname(os.path.abspath(__file__))
KILLS = 24


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def kill_save_loop(folder: str, delay: float) -> list[str]:
    """Start tests/save_loop.py, SIGKILL it `delay` seconds after its first completed save."""
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "save_loop.py"), folder],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    lines = []
    try:
        for line in proc.stdout:                 # wait for generation 1 to be on disk
            lines.append(line.split())
            if line.startswith("saved 1"):
                break
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        lines += [line.split() for line in proc.stdout]
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return lines


def test_sigkill_at_random_moments_while_saving(tmp_path):
    rng = random.Random(20261128)
    interrupted = 0
    for i in range(KILLS):
        folder = tmp_path / f"k{i}"
        folder.mkdir()
        lines = kill_save_loop(str(folder), rng.uniform(0.0, 0.15))
        hashes = {int(l[1]): l[2] for l in lines if l[0] == "saving"}
        last_started = max(hashes)
        completed = last_started if lines[-1][0] == "saved" else last_started - 1
        path = str(folder / "last.npz")
        got = checkpoint.load(path)                      # always a whole, verified checkpoint
        if completed == last_started:
            assert sha(path) == hashes[completed]
        else:                                            # killed inside generation k's save:
            interrupted += 1                             # the old file, or the new one, whole
            assert sha(path) in (hashes[completed], hashes[last_started])
        assert got.meta["step"] == (completed if sha(path) == hashes[completed] else last_started)
        assert np.all(got.params[0] == got.meta["step"])
        checkpoint.remove_stale_temp(str(folder))
        assert os.listdir(folder) == ["last.npz"]
    print(f"{KILLS} kills, {interrupted} inside a save's write")


@pytest.fixture
def saved(tmp_path):
    """A checkpoint file (tests/save_loop.py generation 1) and its bytes."""
    sys.path.insert(0, HERE)
    import save_loop
    path = str(tmp_path / "last.npz")
    checkpoint.save(save_loop.generation(1), path)
    with open(path, "rb") as f:
        before = f.read()
    return path, before, save_loop.generation(2)


def assert_untouched(path: str, before: bytes) -> None:
    with open(path, "rb") as f:
        assert f.read() == before
    assert os.listdir(os.path.dirname(path)) == ["last.npz"]       # no temp file left behind


def test_disk_full_during_write_keeps_the_old_checkpoint(saved, monkeypatch):
    path, before, new = saved

    def full(fd):                      # ENOSPC surfaces at fsync on delayed-allocation filesystems
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError) as e:
        checkpoint.save(new, path)
    assert str(e.value) == f"{path}: cannot write: No space left on device; the previous version (if any) is left intact"
    assert_untouched(path, before)


@pytest.mark.parametrize("where", ["mkstemp", "replace"])
def test_read_only_folder_keeps_the_old_checkpoint(saved, monkeypatch, where):
    path, before, new = saved

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(tempfile if where == "mkstemp" else os, "mkstemp" if where == "mkstemp" else "replace",
                        read_only)
    with pytest.raises(CheckpointError, match=f"^{path}: cannot write: Read-only file system"):
        checkpoint.save(new, path)
    assert_untouched(path, before)


def _limit_file_size():
    """preexec for the child: files may not grow past 4 KiB (writes fail with EFBIG, not SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_cli_file_too_large_exits_2_and_keeps_the_run(tiny_config, tmp_path):
    """A real kernel refusal (RLIMIT_FSIZE) while `fit --resume` writes its next checkpoint."""
    run = tmp_path / "run"
    r = mbtrain("fit", tiny_config, "--out", str(run), "--quiet", "--set", "train.epochs=1")
    assert r.returncode == 0, r.stderr
    last, best = run / "checkpoints" / "last.npz", run / "checkpoints" / "best.npz"
    before = last.read_bytes(), best.read_bytes()
    assert len(before[0]) > 4096
    proc = subprocess.run([sys.executable, "-m", "mbtrain", "fit", "--resume", str(last), "--quiet",
                           "--set", "train.epochs=2"], capture_output=True, text=True, cwd=ROOT,
                          preexec_fn=_limit_file_size, timeout=120)
    assert proc.returncode == 2, proc.stderr
    # epoch 2 improves, so best.npz is the first checkpoint written (last.npz is the commit point)
    assert proc.stderr.splitlines() == [f"error: {best}: cannot write: File too large; "
                                        f"the previous version (if any) is left intact"]
    assert (last.read_bytes(), best.read_bytes()) == before
    assert [n for n in os.listdir(run / "checkpoints") if n.endswith(".tmp")] == []
    assert checkpoint.load(str(last)).meta["epoch"] == 1
