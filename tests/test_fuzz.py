"""Property-based fuzzing: random bytes and random structures into every parser of user input.

The config parser, the --set parser, the data readers and the checkpoint loader may refuse an
input only with the documented errors (mbtrain.errors.MbtrainError and its subclasses); any
other exception is a bug that would reach the user as a traceback.

MBTRAIN_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py   # a longer run than the default
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
import tempfile

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mbtrain import checkpoint, config
from mbtrain.errors import MbtrainError

EXAMPLES = int(os.environ.get("MBTRAIN_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# every real dotted key, so random structures hit the validators and not only "unknown key"
SECTIONS = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in config._SECTIONS.items()}
TOP_KEYS = [f.name for f in dataclasses.fields(config.Config) if f.name not in SECTIONS]

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
           | st.text(max_size=12) | st.sampled_from(["relu", "sgd", "cosine", "float32", "data/x.npz"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


@st.composite
def config_structures(draw):
    """A mapping shaped like a config: real sections and keys with random values, some noise."""
    raw = {}
    for key in draw(st.lists(st.sampled_from(TOP_KEYS), max_size=2)):
        raw[key] = draw(values)
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4)):
        keys = draw(st.lists(st.sampled_from(SECTIONS[section]), max_size=4))
        raw[section] = {k: draw(values) for k in keys} if draw(st.booleans()) else draw(values)
    if draw(st.booleans()):
        raw[draw(st.text(max_size=8))] = draw(values)
    return raw


def only_documented_errors(call, *args):
    """Run call(*args); an MbtrainError is an accepted refusal, anything else fails the test."""
    try:
        return call(*args)
    except MbtrainError as e:
        message = str(e)
        assert message.strip() and "\n" not in message, f"not one line: {message!r}"
        return None


# ---------------------------------------------------------------- config parser

@FUZZ
@given(st.text(max_size=300))
def test_config_text(text):
    only_documented_errors(config.config_from_yaml_text, text, "fuzz.yaml")


@FUZZ
@given(st.binary(max_size=300))
def test_config_file_bytes(data):
    with tempfile.NamedTemporaryFile(suffix=".yaml", delete=False) as f:
        f.write(data)
    try:
        only_documented_errors(config.load_config, f.name)
    finally:
        os.unlink(f.name)


@FUZZ
@given(config_structures())
@example(raw={"checkpoint": {}, "\n": None})             # a key with a newline: still one line
def test_config_structures(raw):
    only_documented_errors(config.load_config, None, [], raw)
    # the same structure as YAML text (when it can be dumped) must behave the same way
    try:
        text = yaml.safe_dump(raw)
    except (yaml.YAMLError, ValueError, RecursionError):
        return
    only_documented_errors(config.config_from_yaml_text, text, "fuzz.yaml")


# ---------------------------------------------------------------- --set parser

@FUZZ
@given(st.lists(st.text(max_size=40), max_size=3))
@example(overrides=["0\n0=\x1b"])
@example(overrides=["0\n0="])
def test_set_random_text(overrides):
    only_documented_errors(config.load_config, None, overrides, {})


@FUZZ
@given(st.sampled_from([f"{s}.{k}" for s in SECTIONS for k in SECTIONS[s]] + TOP_KEYS + ["train", "x.y.z"]),
       st.text(max_size=30) | values.map(lambda v: json.dumps(v, default=str)))
def test_set_real_keys_random_values(key, value):
    only_documented_errors(config.load_config, None, [f"{key}={value}"], {})


# ---------------------------------------------------------------- data readers

def _fit_config(source, layers) -> config.Config:
    return config.load_config(None, [], {"data": {"train": source, "validation": 0},
                                         "model": {"layers": layers}})


def load_data(source, layers=(8, 4, 3)):
    from mbtrain.train import load_splits
    return only_documented_errors(lambda: load_splits(_fit_config(source, list(layers))))


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["d.npz", "d.npy", "train-images-idx3-ubyte", "d.csv",
                                                  "d.csv.gz", "d.bin"]),
       st.binary(max_size=60))
def test_data_random_bytes(data, name, labels):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        with open(os.path.join(folder, "train-labels-idx1-ubyte"), "wb") as f:
            f.write(labels)
        load_data(path)


@st.composite
def idx_files(draw):
    """IDX bytes with a valid-looking header: real type codes, random dims, random payload length."""
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]))
    dims = draw(st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 12), min_size=0, max_size=4))
    payload = draw(st.binary(max_size=600))
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


@FUZZ
@given(idx_files(), idx_files())
@example(images=b"\x00\x00\x08\x04" + bytes(4) + b"\x00\x03\xd0\xdc\x00\x03\xd0\xf2\x08\xca;\xbf",
         labels=b"\x00\x00\x08\x00")                  # zero samples, but numpy refuses the shape
def test_data_idx_structures(images, labels):
    with tempfile.TemporaryDirectory() as folder:
        for name, data in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
        load_data(os.path.join(folder, "train-images-idx3-ubyte"))


dtypes = st.sampled_from(["uint8", "int8", "int64", "float16", "float32", "float64", "bool", "complex64",
                          "<U3", "S2", ">f4", "<M8[s]"])


@st.composite
def arrays(draw):
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=0, max_size=3)))
    dtype = np.dtype(draw(dtypes))
    raw = draw(st.binary(min_size=int(np.prod(shape)) * dtype.itemsize,
                         max_size=int(np.prod(shape)) * dtype.itemsize))
    return np.frombuffer(raw, dtype=dtype).reshape(shape) if dtype.kind not in "UMS" else \
        np.zeros(shape, dtype)


@FUZZ
@given(st.dictionaries(st.sampled_from(["x", "y", "z"]), arrays(), max_size=3),
       st.sampled_from([(8, 4, 3), (1, 1), (2, 2)]), st.booleans())
def test_data_npz_structures(contents, layers, as_folder):
    with tempfile.TemporaryDirectory() as folder:
        if as_folder:
            for k, a in contents.items():
                np.save(os.path.join(folder, f"{k}.npy"), a)
            load_data(folder, layers)
        else:
            path = os.path.join(folder, "d.npz")
            np.savez(path, **contents)
            load_data(path, layers)


# ---------------------------------------------------------------- checkpoint loader

def good_checkpoint_bytes() -> bytes:
    cfg = config.load_config(None, [], {"model": {"layers": [3, 4, 2]}, "train": {"momentum": 0.5}})
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in ((4, 3), (4,), (2, 4), (2,))]
    return checkpoint.to_bytes(checkpoint.Checkpoint(params, {"velocity0": params[0] / 2}, cfg,
                                                     {"epoch": 1, "step": 3}))


GOOD = good_checkpoint_bytes()


def load_checkpoint_bytes(data: bytes):
    with tempfile.NamedTemporaryFile(suffix=".npz", delete=False) as f:
        f.write(data)
    try:
        return only_documented_errors(checkpoint.load, f.name)
    finally:
        os.unlink(f.name)


@FUZZ
@given(st.binary(max_size=500) | st.binary(max_size=300).map(lambda b: b"PK\x03\x04" + b))
def test_checkpoint_random_bytes(data):
    load_checkpoint_bytes(data)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(GOOD)))
def test_checkpoint_mutated(changes, cut):
    data = bytearray(GOOD)
    for i, b in changes:
        data[i] = b
    load_checkpoint_bytes(bytes(data[:cut]))


@FUZZ
@given(st.dictionaries(st.sampled_from(["W0", "b0", "W1", "b1", "opt.velocity0", "W2", "x"]), arrays(), max_size=5),
       st.one_of(st.text(max_size=80), st.just(yaml.safe_dump({"model": {"layers": [3, 4, 2]}}))),
       st.dictionaries(st.sampled_from(["format_version", "epoch", "step", "sha256", "best_val_loss"]),
                       values, max_size=4),
       st.booleans())
def test_checkpoint_structures(arrays_, config_text, meta, right_checksum):
    """Well-formed archives with random arrays, config text and metadata (often a right checksum)."""
    if right_checksum:
        meta = dict(meta, format_version=checkpoint.FORMAT_VERSION, sha256=checkpoint.digest(arrays_))
    try:
        meta_text = json.dumps(meta)
    except (ValueError, TypeError):
        meta_text = "{"
    buf = io.BytesIO()
    np.savez(buf, config=np.array(config_text), meta=np.array(meta_text), **arrays_)
    load_checkpoint_bytes(buf.getvalue())
