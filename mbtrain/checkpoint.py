"""Checkpoints: one .npz holding weights, optimizer state, the resolved config and metadata.

Keys: W0, b0, W1, b1, ... (W_l is (m, n), "to, from"); opt.NAME for each optimizer array;
norm.shift, norm.scale (d,) float64 when data.normalize is not none (mbtrain.normalize);
`config` (the resolved config as a YAML string); `meta` (a JSON string: format_version,
epoch, step, ..., and a SHA-256 of every array). Written atomically (temp file in the same
folder, flush, fsync, os.replace, fsync of the folder); read with allow_pickle=False.

    mbtrain eval runs/mnist-20261128-120000/checkpoints/best.npz
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field

import numpy as np

from mbtrain import __version__, normalize, testhook
from mbtrain.config import Config, config_from_yaml_text
from mbtrain.errors import CheckpointError, ConfigError
from mbtrain.normalize import Normalization

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    params: list[np.ndarray]
    optimizer: dict[str, np.ndarray]
    config: Config
    meta: dict = field(default_factory=dict)
    normalization: Normalization | None = None       # data.normalize statistics of the training split


def digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the arrays, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def to_bytes(ckpt: Checkpoint) -> bytes:
    """The .npz file contents of a checkpoint."""
    arrays = {}
    for l in range(len(ckpt.params) // 2):          # row-major on disk, whatever the model's layout
        arrays[f"W{l}"], arrays[f"b{l}"] = (np.asarray(p, order="C") for p in ckpt.params[2 * l:2 * l + 2])
    for name, a in ckpt.optimizer.items():
        arrays[f"opt.{name}"] = np.asarray(a, order="C")
    if ckpt.normalization is not None:              # norm.shift, norm.scale: covered by the checksum
        arrays.update(ckpt.normalization.arrays())
    meta = dict(ckpt.meta, format_version=FORMAT_VERSION, mbtrain_version=__version__,
                sha256=digest(arrays))
    buf = io.BytesIO()
    np.savez(buf, config=np.array(ckpt.config.to_yaml()), meta=np.array(json.dumps(meta)), **arrays)
    return buf.getvalue()


def save(ckpt: Checkpoint, path: str) -> None:
    """Write atomically: the file at `path` is always the old or the new checkpoint, whole."""
    write_atomic(path, to_bytes(ckpt))


def write_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` so that `path` is always either the old file or the new one, whole.

    Temp file in the same folder (so os.replace is an atomic rename), flush, fsync, replace,
    fsync of the folder (so the rename itself survives a power cut). On an error the temp file
    is removed and the old file is untouched; a SIGKILL can leave a temp file, which
    remove_stale_temp() deletes when the run is resumed.
    """
    folder, name = os.path.split(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + name + ".", suffix=".tmp")
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write: {e.strerror or e}; the previous version "
                              f"(if any) is left intact") from None
    try:
        with os.fdopen(fd, "wb") as f:
            testhook.at("write-open:" + name)
            f.write(data)
            testhook.at("write-data:" + name)
            f.flush()
            os.fsync(f.fileno())
            testhook.at("write-synced:" + name)
        os.replace(tmp, path)
        testhook.at("write-replaced:" + name)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise CheckpointError(f"{path}: cannot write: {e.strerror or e}; the previous version "
                              f"(if any) is left intact") from None
    fsync_dir(folder)


# mkstemp's names: "." + target name + "." + 8 random characters + ".tmp"
_TEMP_NAME = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")


def remove_stale_temp(folder: str) -> list[str]:
    """Delete temp files a killed write_atomic left in `folder`; returns their names."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if _TEMP_NAME.fullmatch(name):
            try:
                os.unlink(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def resolve(path: str, purpose: str = "evaluate") -> str:
    """The checkpoint file that `path` names: the path itself, or for a run directory (or its
    checkpoints/ folder) the one a user means by it: checkpoints/best.npz to evaluate or predict
    with (last.npz when the run has no best yet: it was stopped in its first epoch), last.npz to
    resume. CheckpointError for a directory that holds neither.

        mbtrain eval runs/mnist              # = runs/mnist/checkpoints/best.npz
    """
    if not os.path.isdir(path):
        return path
    names = ["last.npz"] if purpose == "resume" else ["best.npz", "last.npz"]
    for folder in (os.path.join(path, "checkpoints"), path):
        for name in names:
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    wanted = " or ".join(f"checkpoints/{n}" for n in names)
    raise CheckpointError(f"{path}: is a directory without {wanted}; expected a checkpoint .npz file "
                          f"or a run directory")


def load(path: str) -> Checkpoint:
    """Read and verify a checkpoint; CheckpointError naming the file and the problem otherwise."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint .npz file")
    _check_magic(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise CheckpointError(f"{path}: not a checkpoint (.npz archive)")
            arrays = {name: z[name] for name in z.files}
    except CheckpointError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise CheckpointError(f"{path}: holds a pickled object, which mbtrain never loads") from None
        raise CheckpointError(f"{path}: not a readable checkpoint: {_first_line(e)}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, Exception) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): "
                              f"{_first_line(e)}") from None
    return _parse(path, arrays)


def _check_magic(path: str) -> None:
    """Refuse anything but a zip (.npz) archive by its first bytes, before numpy looks at it."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint: {e.strerror or e}") from None
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return
    if head[:1] == b"\x80":                       # pickle protocol 2 and later
        raise CheckpointError(f"{path}: holds a pickled object, which mbtrain never loads")
    if head == b"\x93NUMPY":
        raise CheckpointError(f"{path}: is a single .npy array, not a checkpoint .npz archive")
    found = f"it starts with bytes {head[:4].hex(' ')}" if head else "it is empty"
    raise CheckpointError(f"{path}: not a checkpoint: expected an .npz (zip) archive, {found}")


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _parse(path: str, arrays: dict[str, np.ndarray]) -> Checkpoint:
    for key in ("meta", "config"):
        if key not in arrays or arrays[key].dtype.kind != "U" or arrays[key].ndim != 0:
            raise CheckpointError(f"{path}: missing or malformed '{key}' entry; not an mbtrain checkpoint")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except ValueError:
        raise CheckpointError(f"{path}: metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata is not a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r}, this mbtrain reads {FORMAT_VERSION}")
    config_text = str(arrays.pop("config"))
    if meta.get("sha256") != digest(arrays):      # before parsing anything else from the file
        raise CheckpointError(f"{path}: checksum mismatch: the arrays are not what was saved (corrupt file)")
    try:
        config = config_from_yaml_text(config_text, f"{path} (embedded config)")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    layers = config.model.layers
    params = []
    for l, (n, m) in enumerate(zip(layers[:-1], layers[1:])):
        for name, shape in ((f"W{l}", (m, n)), (f"b{l}", (m,))):
            a = arrays.get(name)
            if a is None:
                raise CheckpointError(f"{path}: array {name} is missing (config layers {layers})")
            if a.shape != shape or a.dtype != np.dtype(config.train.dtype):
                raise CheckpointError(f"{path}: array {name} has shape {a.shape} {a.dtype}, the embedded "
                                      f"config (layers {layers}) needs {shape} {config.train.dtype}")
            params.append(a.copy())
    optimizer = {k[4:]: v.copy() for k, v in arrays.items() if k.startswith("opt.")}
    try:
        norm = normalize.from_arrays(config.data.normalize, arrays, layers[0])
    except KeyError as e:
        raise CheckpointError(f"{path}: array {e.args[0]} is missing; the embedded config has "
                              f"data.normalize = {config.data.normalize}") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return Checkpoint(params, optimizer, config, meta, norm)
