"""Checkpoint integrity: every damaged or foreign file is refused by name, nothing is unpickled.

Truncation at every byte offset, a flipped bit in every byte, random bytes, a wrong
format_version, arrays that disagree with the embedded config, a changed array under the old
checksum, and pickles whose loading would leave a marker file.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random

import numpy as np
import pytest

from mbtrain import checkpoint
from mbtrain.config import load_config
from mbtrain.errors import CheckpointError


def small_checkpoint() -> checkpoint.Checkpoint:
    cfg = load_config(None, base={"model": {"layers": [3, 4, 2]}, "train": {"momentum": 0.5}})
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in ((4, 3), (4,), (2, 4), (2,))]
    velocity = {f"velocity{i}": p / 3 for i, p in enumerate(params)}
    return checkpoint.Checkpoint(params, velocity, cfg, {"epoch": 2, "epoch_step": 1, "step": 9})


@pytest.fixture
def good(tmp_path):
    """(path of a valid small checkpoint, its bytes, the loaded Checkpoint)."""
    path = str(tmp_path / "good.npz")
    checkpoint.save(small_checkpoint(), path)
    with open(path, "rb") as f:
        data = f.read()
    return path, data, checkpoint.load(path)


def same(a: checkpoint.Checkpoint, b: checkpoint.Checkpoint) -> bool:
    return (all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(a.params, b.params))
            and sorted(a.optimizer) == sorted(b.optimizer)
            and all(np.array_equal(a.optimizer[k], b.optimizer[k]) for k in a.optimizer)
            and a.config == b.config and a.meta == b.meta)


def refused(path: str) -> str:
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(path)
    message = str(e.value)
    assert message.startswith(path + ": ") and "\n" not in message
    return message


def rewrite(path: str, arrays: dict, meta_changes: dict | None = None, keep_sha=False) -> None:
    """Write an .npz from `arrays` (plus config/meta), recomputing the checksum unless keep_sha."""
    arrays = dict(arrays)
    meta = json.loads(str(arrays.pop("meta")))
    config = arrays.pop("config")
    if not keep_sha:
        meta["sha256"] = checkpoint.digest(arrays)
    meta.update(meta_changes or {})
    np.savez(path, config=config, meta=np.array(json.dumps(meta)), **arrays)


def arrays_of(path: str) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class Scratch:
    """One file rewritten in place many times (pwrite + ftruncate: reopening with 'wb' makes
    some filesystems flush on every close, which is 1000 times slower)."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def holds(self, data: bytes) -> str:
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))
        return self.path

    def close(self):
        os.close(self.fd)


def test_truncated_at_every_byte_offset(good, tmp_path):
    path, data, _ = good
    scratch = Scratch(str(tmp_path / "cut.npz"))
    for n in range(len(data)):
        refused(scratch.holds(data[:n]))
    scratch.close()


def test_a_flipped_bit_in_every_third_byte_is_refused_or_harmless(good, tmp_path):
    """A flip in a value (array, config, meta) is refused: zip CRC-32 and the SHA-256 catch it.

    A few bytes of the zip container hold no value (timestamps, 'version made by', ...): a
    flip there loads the very same checkpoint, which is the one acceptable alternative.
    """
    path, data, want = good
    scratch = Scratch(str(tmp_path / "flip.npz"))
    bad = scratch.path
    rng = random.Random(4)
    harmless = 0
    for i in range(0, len(data), 3):
        flipped = bytearray(data)
        flipped[i] ^= 1 << rng.randrange(8)
        scratch.holds(bytes(flipped))
        try:
            got = checkpoint.load(bad)
        except CheckpointError as e:
            assert str(e).startswith(bad + ": ")
            continue
        assert same(got, want), f"flip at byte {i} loaded a different checkpoint"
        harmless += 1
    scratch.close()
    assert harmless < len(data) // 3 // 4


@pytest.mark.parametrize("size", [0, 1, 7, 100, 5000])
@pytest.mark.parametrize("prefix", [b"", b"PK\x03\x04", b"\x93NUMPY"])
def test_random_bytes(tmp_path, size, prefix):
    path = str(tmp_path / "noise.npz")
    with open(path, "wb") as f:
        f.write(prefix + random.Random(size).randbytes(size))
    refused(path)


def test_wrong_format_version(good, tmp_path):
    path = str(tmp_path / "v.npz")
    rewrite(path, arrays_of(good[0]), {"format_version": 99})
    assert refused(path) == f"{path}: format_version 99, this mbtrain reads {checkpoint.FORMAT_VERSION}"


@pytest.mark.parametrize("name, array, expect", [
    ("W0", np.zeros((4, 5), np.float32), "array W0 has shape (4, 5) float32, the embedded config "
                                         "(layers [3, 4, 2]) needs (4, 3) float32"),
    ("b1", np.zeros((3,), np.float32), "array b1 has shape (3,) float32"),
    ("W1", np.zeros((2, 4), np.float64), "array W1 has shape (2, 4) float64"),
])
def test_arrays_that_disagree_with_the_embedded_config(good, tmp_path, name, array, expect):
    path = str(tmp_path / "shape.npz")
    rewrite(path, dict(arrays_of(good[0]), **{name: array}))       # checksum recomputed: it passes
    assert expect in refused(path)


def test_missing_array(good, tmp_path):
    path = str(tmp_path / "missing.npz")
    arrays = arrays_of(good[0])
    del arrays["b0"]
    rewrite(path, arrays)
    assert "array b0 is missing" in refused(path)


def test_changed_array_under_the_old_checksum(good, tmp_path):
    path = str(tmp_path / "changed.npz")
    arrays = arrays_of(good[0])
    arrays["W1"] = arrays["W1"] + np.float32(1e-3)
    rewrite(path, arrays, keep_sha=True)
    assert "checksum mismatch" in refused(path)


class Marker:
    """Unpickling this creates a file: the test proves it never happens."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_file_is_never_unpickled(tmp_path):
    path, marker = str(tmp_path / "evil.npz"), str(tmp_path / "UNPICKLED")
    with open(path, "wb") as f:
        pickle.dump(Marker(marker), f)
    assert "pickled object" in refused(path)
    assert not os.path.exists(marker)


def test_an_object_array_in_the_npz_is_never_unpickled(good, tmp_path):
    path, marker = str(tmp_path / "evil.npz"), str(tmp_path / "UNPICKLED")
    arrays = arrays_of(good[0])
    arrays["opt.velocity0"] = np.array([Marker(marker)], dtype=object)
    np.savez(path, **arrays)
    assert "pickled object" in refused(path)
    assert not os.path.exists(marker)


def test_not_a_checkpoint_npz(tmp_path):
    path = str(tmp_path / "data.npz")
    np.savez(path, x=np.zeros((2, 3)), y=np.zeros(2))
    assert "not an mbtrain checkpoint" in refused(path)


def test_directory_and_missing_file(tmp_path):
    assert refused(str(tmp_path)).endswith("is a directory, expected a checkpoint .npz file")
    assert refused(str(tmp_path / "nope.npz")).endswith("checkpoint not found")
