"""Checkpoints: round trip, atomic replacement, and refusal of pickles and corrupt files."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest

from mbtrain import checkpoint
from mbtrain.config import load_config
from mbtrain.errors import CheckpointError
from mbtrain.train import build_model


@pytest.fixture
def ckpt(tiny_config):
    cfg = load_config(tiny_config, ["train.dtype=float64"])
    model = build_model(cfg)
    velocity = {f"velocity{i}": np.full_like(p, 0.5) for i, p in enumerate(model.params)}
    return checkpoint.Checkpoint(model.params, velocity, cfg, {"epoch": 2, "step": 30, "epoch_step": 0})


def test_round_trip(tmp_path, ckpt):
    (tmp_path / "ck").mkdir()
    path = str(tmp_path / "ck" / "last.npz")
    checkpoint.save(ckpt, path)
    back = checkpoint.load(path)
    assert back.config == ckpt.config
    assert back.meta["epoch"] == 2 and back.meta["format_version"] == checkpoint.FORMAT_VERSION
    for a, b in zip(back.params, ckpt.params):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert set(back.optimizer) == set(ckpt.optimizer)
    assert [f for f in os.listdir(tmp_path / "ck")] == ["last.npz"]        # no temp file left behind


def test_a_column_major_weight_is_saved_row_major(tmp_path, tiny_config):
    """W0 of 64 neurons lives column-major in the model (model.weight_order); the file has it row-major."""
    cfg = load_config(tiny_config, ["model.layers=[8,64,3]"])
    model = build_model(cfg)
    assert model.weights[0].flags.f_contiguous and not model.weights[0].flags.c_contiguous
    velocity = {f"velocity{i}": p * 2 for i, p in enumerate(model.params)}
    path = str(tmp_path / "c.npz")
    checkpoint.save(checkpoint.Checkpoint(model.params, velocity, cfg, {"epoch": 1}), path)
    with np.load(path, allow_pickle=False) as z:
        assert z["W0"].flags.c_contiguous and z["opt.velocity0"].flags.c_contiguous
    back = checkpoint.load(path)
    for a, b in zip(back.params, model.params):
        assert np.array_equal(a, b)
    assert np.array_equal(back.optimizer["velocity0"], 2 * model.weights[0])


def test_layout_is_documented_keys(tmp_path, ckpt):
    path = str(tmp_path / "c.npz")
    checkpoint.save(ckpt, path)
    with np.load(path, allow_pickle=False) as z:
        assert {"W0", "b0", "W1", "b1", "config", "meta", "opt.velocity0"} <= set(z.files)
        assert z["W0"].shape == (16, 8) and z["W1"].shape == (3, 16)      # (m, n): to, from
        assert json.loads(str(z["meta"]))["sha256"]


def test_atomic_save_replaces_whole_file(tmp_path, ckpt):
    path = str(tmp_path / "c.npz")
    checkpoint.save(ckpt, path)
    first = open(path, "rb").read()
    ckpt.meta["epoch"] = 3
    checkpoint.save(ckpt, path)
    assert open(path, "rb").read() != first and checkpoint.load(path).meta["epoch"] == 3


def test_pickled_object_is_refused(tmp_path):
    path = str(tmp_path / "evil.npz")
    np.savez(path, W0=np.array([{"a": 1}], dtype=object), meta=np.array("{}"), config=np.array(""))
    with pytest.raises(CheckpointError, match="pickled object"):
        checkpoint.load(path)


@pytest.mark.parametrize("cut", [0, 10, 100, 1000, -100, -1])
def test_truncated_file_is_refused(tmp_path, ckpt, cut):
    path = str(tmp_path / "c.npz")
    checkpoint.save(ckpt, path)
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[:cut] if cut >= 0 else blob[:len(blob) + cut])
    with pytest.raises(CheckpointError, match="c.npz"):
        checkpoint.load(path)


def test_changed_array_fails_the_checksum(tmp_path, ckpt):
    path = str(tmp_path / "c.npz")
    checkpoint.save(ckpt, path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["W0"] = arrays["W0"] + 1e-12
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoint.load(path)


def test_wrong_format_version_and_shapes(tmp_path, ckpt):
    path = str(tmp_path / "c.npz")
    checkpoint.save(ckpt, path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    bad = dict(arrays, meta=np.array(json.dumps(dict(meta, format_version=99))))
    np.savez(path, **bad)
    with pytest.raises(CheckpointError, match="format_version 99"):
        checkpoint.load(path)
    arrays["W0"] = np.zeros((5, 8))
    del meta["sha256"]
    weights = {k: v for k, v in arrays.items() if k not in ("meta", "config")}
    meta["sha256"] = checkpoint.digest(weights)
    np.savez(path, **dict(arrays, meta=np.array(json.dumps(meta))))
    with pytest.raises(CheckpointError, match=r"W0 has shape \(5, 8\).*needs \(16, 8\)"):
        checkpoint.load(path)


def test_not_a_checkpoint(tmp_path):
    for name, blob in (("random.npz", os.urandom(300)), ("empty.npz", b"")):
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(CheckpointError, match=name):
            checkpoint.load(str(path))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hello.txt", "hi")
    (tmp_path / "zip.npz").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="zip.npz"):
        checkpoint.load(str(tmp_path / "zip.npz"))
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(str(tmp_path / "missing.npz"))
