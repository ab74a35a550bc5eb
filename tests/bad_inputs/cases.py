"""The catalogue of bad inputs: each is run through the real CLI by tests/test_bad_inputs.py.

A case is (id, files it needs, command line, pieces its one `error:` line must contain).
Files are written into a fresh workspace that also holds good data (good.npz), a good config
(good.yaml) and a finished run (run/); the command runs with that workspace as its folder.
Every case must exit 2 with exactly one line on stderr, no traceback, and leave run/ and the
rest of the workspace byte-identical.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
from typing import Callable, NamedTuple, Union

import numpy as np
import yaml

GOOD = {
    "seed": 1,
    "data": {"train": "good.npz", "validation": 20},
    "model": {"layers": [8, 6, 3], "activation": "tanh"},
    "train": {"epochs": 1, "batch_size": 16, "lr": 0.2},
}

Content = Union[str, bytes, Callable[[str], bytes]]     # a callable gets the workspace path


class Case(NamedTuple):
    id: str
    argv: list
    expect: list
    files: dict = {}


def config(changes: dict | None = None, drop: tuple = ()) -> str:
    """The good config with dotted keys changed (or dropped), as YAML text."""
    cfg = json.loads(json.dumps(GOOD))
    for dotted, value in (changes or {}).items():
        *path, last = dotted.split(".")
        node = cfg
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    for dotted in drop:
        *path, last = dotted.split(".")
        node = cfg
        for p in path:
            node = node[p]
        del node[last]
    return yaml.safe_dump(cfg, sort_keys=False)


FIT_BAD = ["fit", "bad.yaml", "--out", "new", "-q"]


def cfg_case(id: str, changes: dict, expect: list, drop: tuple = ()) -> Case:
    """fit with the good config changed at dotted keys."""
    return Case(id, FIT_BAD, expect, {"bad.yaml": config(changes, drop)})


def text_case(id: str, text: Content, expect: list) -> Case:
    """fit with bad.yaml holding exactly `text`."""
    return Case(id, FIT_BAD, expect, {"bad.yaml": text})


def blobs(n=60, features=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, features)).astype(np.float32), rng.integers(0, classes, n)


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def idx(array: np.ndarray, code: int = 0x08, magic: bytes | None = None, dims=None) -> bytes:
    """IDX bytes: 00 00 type ndim, big-endian uint32 dims, then the data."""
    dims = array.shape if dims is None else dims
    head = magic if magic is not None else bytes([0, 0, code, len(dims)])
    return head + struct.pack(f">{len(dims)}I", *dims) + array.tobytes()


IMAGES = (np.arange(20 * 8) % 255).astype(np.uint8).reshape(20, 8)
LABELS = (np.arange(20) % 3).astype(np.uint8)


def data_case(id: str, files: dict, expect: list, source="train-images-idx3-ubyte") -> Case:
    """fit on `source` (a data file among `files`) with the good model."""
    files = dict(files, **{"d.yaml": config({"data.train": source, "data.validation": 0})})
    return Case(id, ["fit", "d.yaml", "--out", "new", "-q"], expect, files)


def pickle_bomb(workspace: str) -> bytes:
    """A pickle whose loading would create the file UNPICKLED in the workspace."""
    class Marker:
        def __reduce__(self):
            return (open, (f"{workspace}/UNPICKLED", "w"))
    return pickle.dumps(Marker())


def checkpoint_from_run(change: Callable[[dict], dict]) -> Callable[[str], bytes]:
    """The run's last.npz with its arrays changed by `change` (checksum recomputed)."""
    def build(workspace: str) -> bytes:
        from mbtrain.checkpoint import digest
        with np.load(f"{workspace}/run/checkpoints/last.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        arrays = change(arrays)
        meta = json.loads(str(arrays.pop("meta")))
        config_text = arrays.pop("config")
        meta.setdefault("sha256", None)
        if meta["sha256"] != "keep":
            meta["sha256"] = digest(arrays)
        return npz(config=config_text, meta=np.array(json.dumps(meta)), **arrays)
    return build


def run_file(transform: Callable[[bytes], bytes]) -> Callable[[str], bytes]:
    def build(workspace: str) -> bytes:
        with open(f"{workspace}/run/checkpoints/last.npz", "rb") as f:
            return transform(f.read())
    return build


def flip(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0x10
    return bytes(out)


def set_meta(**changes):
    def change(arrays):
        meta = json.loads(str(arrays["meta"]))
        meta.update(changes)
        return dict(arrays, meta=np.array(json.dumps(meta)))
    return change


x, y = blobs()
CKPT = "run/checkpoints/last.npz"

CASES = [
    # ------------------------------------------------------------ config files
    cfg_case("config-unknown-top-key", {"optimiser": "sgd"},
             ["bad.yaml", "unknown key optimiser", "allowed: seed, data"]),
    cfg_case("config-typo-of-a-key", {"model.layer": [8, 3]},
             ["bad.yaml", "unknown key model.layer", "did you mean model.layers?"]),
    cfg_case("config-typo-in-train", {"train.epoch": 3},
             ["bad.yaml", "unknown key train.epoch", "did you mean train.epochs?"]),
    cfg_case("config-wrong-type-int", {"train.epochs": "ten"},
             ["bad.yaml", "train.epochs = 'ten'", "expected an integer"]),
    cfg_case("config-wrong-type-float", {"train.lr": "fast"},
             ["bad.yaml", "train.lr = 'fast'", "expected a number"]),
    cfg_case("config-wrong-type-bool", {"train.nesterov": "yes please"},
             ["bad.yaml", "train.nesterov = 'yes please'", "expected true or false"]),
    cfg_case("config-zero-batch", {"train.batch_size": 0},
             ["bad.yaml", "train.batch_size = 0", "expected a value >= 1"]),
    cfg_case("config-negative-lr", {"train.lr": -0.1},
             ["bad.yaml", "train.lr = -0.1", "expected a value > 0"]),
    cfg_case("config-huge-epochs", {"train.epochs": 10**9},
             ["bad.yaml", "train.epochs = 1000000000", "expected a value <= 100000"]),
    cfg_case("config-infinite-lr", {"train.lr": float("inf")},
             ["bad.yaml", "train.lr = inf", "expected a finite number"]),
    cfg_case("config-momentum-too-big", {"train.momentum": 1.5},
             ["bad.yaml", "train.momentum = 1.5", "<= 0.999999"]),
    cfg_case("config-negative-seed", {"seed": -1}, ["bad.yaml", "seed = -1", "expected a value >= 0"]),
    cfg_case("config-unknown-activation", {"model.activation": "rleu"},
             ["bad.yaml", "model.activation = 'rleu'", "one of", "relu", "(did you mean relu?)"]),
    cfg_case("config-one-layer", {"model.layers": [8]},
             ["bad.yaml", "model.layers = [8]", "a list of at least two integer layer sizes"]),
    cfg_case("config-zero-layer-size", {"model.layers": [8, 0, 3]},
             ["bad.yaml", "model.layers = [8, 0, 3]", "layer sizes between 1 and"]),
    cfg_case("config-layers-do-not-fit-features", {"model.layers": [5, 6, 3]},
             ["good.npz", "samples have 8 features", "model.layers[0] = 5"]),
    cfg_case("config-layers-too-few-classes", {"model.layers": [8, 6, 2]},
             ["good.npz", "label y[", "= 2 is outside [0, 2)", "model.layers[-1] = 2"]),
    cfg_case("config-validation-negative", {"data.validation": -5},
             ["bad.yaml", "data.validation = -5", "a sample count (integer >= 0) or a fraction in [0, 1)"]),
    cfg_case("config-validation-too-big", {"data.validation": 100000},
             ["good.npz", "data.validation = 100000", "leaves no training samples", "has 120"]),
    cfg_case("config-nesterov-without-momentum", {"train.nesterov": True},
             ["bad.yaml", "train.nesterov = true needs train.momentum > 0"]),
    cfg_case("config-fused-update-with-momentum", {"train.fused_update": "on", "train.momentum": 0.9},
             ["bad.yaml", "train.fused_update = on needs plain SGD", "momentum 0.9"]),
    cfg_case("config-section-not-a-mapping", {"train": 5},
             ["bad.yaml", "train: expected a mapping, got 5"]),
    cfg_case("config-negative-every-steps", {"checkpoint.every_steps": -1},
             ["bad.yaml", "checkpoint.every_steps = -1", "expected a value >= 0"]),
    cfg_case("config-negative-clip-norm", {"train.clip_norm": -1.0},
             ["bad.yaml", "train.clip_norm = -1.0", "expected a value >= 0"]),
    cfg_case("config-data-file-missing", {"data.train": "nowhere.npz"},
             ["nowhere.npz", "data file not found"]),
    text_case("config-yaml-syntax-error", "model:\n  layers: [8, 6, 3\ntrain: {}\n",
              ["bad.yaml", "invalid YAML at line"]),
    text_case("config-empty-file", "", ["bad.yaml", "config file is empty", "expected a mapping"]),
    text_case("config-python-object-tag", "seed: !!python/object/apply:os.system ['touch PWNED']\n",
              ["bad.yaml", "invalid YAML at line 1, column 7", "tags such as !!python/object are refused"]),
    text_case("config-top-level-list", "- 1\n- 2\n", ["bad.yaml", "expected a mapping", "got list"]),
    text_case("config-not-utf8", b"seed: \xff\xfe\x00\n", ["bad.yaml", "cannot read config file"]),
    Case("config-is-a-directory", ["fit", "adir", "--out", "new", "-q"],
         ["adir", "is a directory, expected a YAML config file"], {"adir/keep": ""}),
    Case("config-missing-file", ["fit", "missing.yaml", "--out", "new", "-q"],
         ["missing.yaml", "config file not found"]),

    # ------------------------------------------------------------ data files
    data_case("data-truncated-idx", {"train-images-idx3-ubyte": idx(IMAGES)[:-7],
                                     "train-labels-idx1-ubyte": idx(LABELS)},
              ["train-images-idx3-ubyte", "IDX header says dimensions (20, 8)", "(172 bytes with header), but the file holds 165 bytes"]),
    data_case("data-wrong-magic", {"train-images-idx3-ubyte": idx(IMAGES, magic=b"\x01\x02\x08\x02"),
                                   "train-labels-idx1-ubyte": idx(LABELS)},
              ["train-images-idx3-ubyte", "not an IDX file: magic number 01020802", "expected 0000"]),
    data_case("data-counts-disagree", {"train-images-idx3-ubyte": idx(IMAGES),
                                       "train-labels-idx1-ubyte": idx(LABELS[:19])},
              ["train-images-idx3-ubyte", "x has 20 samples but y has 19"]),
    data_case("data-labels-out-of-range", {"train-images-idx3-ubyte": idx(IMAGES),
                                           "train-labels-idx1-ubyte": idx(LABELS * 3)},
              ["train-images-idx3-ubyte", "label y[1] = 3 is outside [0, 3)", "model.layers[-1] = 3"]),
    data_case("data-labels-missing", {"train-images-idx3-ubyte": idx(IMAGES)},
              ["train-labels-idx1-ubyte", "data file not found"]),
    data_case("data-truncated-gzip", {"train-images-idx3-ubyte.gz": gzip.compress(idx(IMAGES))[:-20],
                                      "train-labels-idx1-ubyte.gz": gzip.compress(idx(LABELS))},
              ["train-images-idx3-ubyte.gz", "cannot read gzipped IDX file"], "train-images-idx3-ubyte.gz"),
    data_case("data-nan-features", {"nan.npz": npz(x=np.where(np.arange(60)[:, None] == 17, np.nan, x)
                                                   .astype(np.float32), y=y)},
              ["nan.npz", "x[17] feature 0 is nan, expected a finite number"], "nan.npz"),
    data_case("data-inf-features", {"inf.npz": npz(x=np.where(np.arange(60)[:, None] == 3, np.inf, x)
                                                   .astype(np.float32), y=y)},
              ["inf.npz", "x[3] feature 0 is inf, expected a finite number"], "inf.npz"),
    data_case("data-xy-length-mismatch", {"short.npz": npz(x=x, y=y[:50])},
              ["short.npz", "x has 60 samples but y has 50"], "short.npz"),
    data_case("data-wrong-dtype", {"str.npz": npz(x=x.astype(str), y=y)},
              ["str.npz", "array x has dtype <U", "expected an integer or floating dtype"], "str.npz"),
    data_case("data-empty-arrays", {"empty.npz": npz(x=np.zeros((0, 8), np.float32), y=np.zeros(0, np.int64))},
              ["empty.npz", "data is empty (0 samples)"], "empty.npz"),
    data_case("data-npz-without-y", {"noy.npz": npz(x=x)},
              ["noy.npz", "holds arrays ['x']", "expected 'x' and 'y'"], "noy.npz"),
    data_case("data-fractional-labels", {"frac.npz": npz(x=x, y=y + 0.5)},
              ["frac.npz", "label y[0] = 2.5 is not a whole class number", "expected an integer in [0, 3)"], "frac.npz"),
    data_case("data-object-array", {"obj.npz": npz(x=np.array([object()] * 60, dtype=object), y=y)},
              ["obj.npz", "cannot read .npz file"], "obj.npz"),
    data_case("data-folder-without-arrays", {"folder/readme.txt": "nothing here"},
              ["folder", "folder holds no x.npy and y.npy"], "folder"),
    data_case("data-single-npy", {"x.npy": lambda w: _npy(x)},
              ["x.npy", "a single .npy file holds no labels"], "x.npy"),
    Case("data-eval-wrong-features", ["eval", CKPT, "--data", "wide.npz"],
         ["wide.npz", "samples have 9 features", "model.layers[0] = 8"],
         {"wide.npz": npz(x=np.zeros((4, 9), np.float32), y=np.zeros(4, np.int64))}),

    # ------------------------------------------------------------ checkpoints (eval and --resume)
    Case("ckpt-truncated", ["eval", "cut.npz", "--data", "good.npz"],
         ["cut.npz", "not a readable checkpoint (truncated or corrupt?)"],
         {"cut.npz": run_file(lambda b: b[: len(b) // 2])}),
    Case("ckpt-flipped-bit", ["fit", "--resume", "flip.npz", "--out", "new", "-q"],
         ["flip.npz", "not a readable checkpoint (truncated or corrupt?)"], {"flip.npz": run_file(flip)}),
    Case("ckpt-random-bytes", ["eval", "noise.npz", "--data", "good.npz"],
         ["noise.npz", "not a checkpoint: expected an .npz (zip) archive, it starts with bytes 00 01 02 03"],
         {"noise.npz": bytes(range(256)) * 4}),
    Case("ckpt-wrong-format-version", ["eval", "v9.npz", "--data", "good.npz"],
         ["v9.npz", "format_version 9, this mbtrain reads 1"],
         {"v9.npz": checkpoint_from_run(set_meta(format_version=9))}),
    Case("ckpt-shape-mismatch", ["fit", "--resume", "shape.npz", "--out", "new", "-q"],
         ["shape.npz", "array W0 has shape (6, 9) float32", "(layers [8, 6, 3]) needs (6, 8) float32"],
         {"shape.npz": checkpoint_from_run(lambda a: dict(a, W0=np.zeros((6, 9), np.float32)))}),
    Case("ckpt-checksum-mismatch", ["eval", "sum.npz", "--data", "good.npz"],
         ["sum.npz", "checksum mismatch"],
         {"sum.npz": checkpoint_from_run(lambda a: dict(set_meta(sha256="keep")(a), b0=a["b0"] + 1))}),
    Case("ckpt-pickled-object", ["eval", "evil.npz", "--data", "good.npz"],
         ["evil.npz", "holds a pickled object, which mbtrain never loads"], {"evil.npz": pickle_bomb}),
    Case("ckpt-missing", ["fit", "--resume", "run/checkpoints/nope.npz", "-q"],
         ["run/checkpoints/nope.npz", "checkpoint not found"]),
    Case("ckpt-is-a-directory", ["eval", "adir"],
         ["adir", "is a directory without checkpoints/best.npz or checkpoints/last.npz; expected a checkpoint "
          ".npz file or a run directory"], {"adir/keep": ""}),
    Case("ckpt-resume-directory-without-last", ["fit", "--resume", "adir", "-q"],
         ["adir", "is a directory without checkpoints/last.npz"], {"adir/checkpoints/best.npz": ""}),
    Case("ckpt-data-npz-instead", ["eval", "good.npz"],
         ["good.npz", "missing or malformed 'meta' entry; not an mbtrain checkpoint"]),
    Case("ckpt-resume-other-model", ["fit", "wide.yaml", "--resume", CKPT, "-q"],
         [CKPT, "holds a [8, 6, 3] float32 network", "the config asks for [8, 12, 3] float32"],
         {"wide.yaml": config({"model.layers": [8, 12, 3]})}),
    Case("ckpt-resume-bad-data", ["fit", "--resume", CKPT, "-q", "--set", "data.train=nowhere.npz"],
         ["nowhere.npz", "data file not found"]),

    # ------------------------------------------------------------ command line
    Case("cli-fit-missing-config", ["fit", "-q"], ["missing argument CONFIG (or give --resume CKPT)"]),
    Case("cli-eval-missing-argument", ["eval"], ["Missing argument 'ckpt'", "mbtrain eval --help"]),
    Case("cli-set-without-equals", ["fit", "good.yaml", "--out", "new", "--set", "train.lr"],
         ["--set 'train.lr'", "expected KEY=VALUE"]),
    Case("cli-set-empty-key", ["fit", "good.yaml", "--out", "new", "--set", "=3"],
         ["--set '=3'", "expected a dotted key"]),
    Case("cli-set-bad-yaml", ["fit", "good.yaml", "--out", "new", "--set", "train.lr=[0.1"],
         ["--set train.lr: value '[0.1' is not valid YAML: expected ',' or ']'"]),
    Case("cli-set-unknown-key", ["fit", "good.yaml", "--out", "new", "--set", "train.lrate=0.1"],
         ["--set: unknown key train.lrate", "did you mean train.lr?"]),
    Case("cli-set-into-a-value", ["fit", "good.yaml", "--out", "new", "--set", "train.lr.x=1"],
         ["--set train.lr.x", "train.lr is not a section"]),
    Case("cli-set-wrong-value", ["fit", "good.yaml", "--out", "new", "--set", "train.batch_size=-4"],
         ["--set: train.batch_size = -4", "expected a value >= 1"]),
    Case("cli-unknown-flag", ["fit", "good.yaml", "--bogus"], ["No such option: --bogus"]),
    Case("cli-unknown-command", ["train", "good.yaml"], ["No such command 'train'"]),
    Case("cli-set-python-tag", ["fit", "good.yaml", "--out", "new", "--set", "seed=!!python/object/apply:os.getpid []"],
         ["--set seed", "tags such as !!python/object are refused"]),
    Case("ckpt-npy-instead", ["eval", "x.npy", "--data", "good.npz"],
         ["x.npy", "is a single .npy array, not a checkpoint .npz archive"], {"x.npy": lambda w: _npy(x)}),
    Case("ckpt-empty-file", ["eval", "empty.npz", "--data", "good.npz"],
         ["empty.npz", "not a checkpoint: expected an .npz (zip) archive, it is empty"], {"empty.npz": b""}),
    Case("cli-out-is-existing-run", ["fit", "good.yaml", "--out", "run", "-q"],
         ["run: run directory already exists and is not empty"]),
]


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()
