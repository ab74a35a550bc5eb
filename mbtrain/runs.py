"""Run directories: where a run's resolved config, metrics, checkpoints and summary live.

    runs/mnist-20261128-120000/
        status               one word, kept current: running, completed, diverged, failed, interrupted
        run.json             command line, overrides, package versions, BLAS, host, pid, exit code
        config.yaml          the resolved config
        metrics.csv          one row per epoch
        checkpoints/last.npz, checkpoints/best.npz
        summary.json         final, best and test metrics, wall time, samples/s

The default directory is runs/<config name>-<UTC time>, with -2, -3, ... appended when runs
start in the same second; an existing non-empty directory is only reused by --resume, or
emptied by an explicit --overwrite.

    mbtrain fit configs/mnist.yaml --out runs/my-run
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import socket
import threading
import time

from mbtrain import environment
from mbtrain.checkpoint import write_atomic
from mbtrain.errors import Diverged, Interrupted, MbtrainError

STATUS_FILE = "status"
STATUSES = ("running", "completed", "diverged", "failed", "interrupted")
# files that mark a directory as an mbtrain run (what --overwrite is allowed to empty)
RUN_MARKERS = (STATUS_FILE, "run.json", "config.yaml", "metrics.csv")
METRICS = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
REGRESSION_METRICS = ["val_mae", "val_r2"]      # added for model.output = identity_mse


def default_dir(config_path: str | None, root: str = "runs") -> str:
    name = os.path.splitext(os.path.basename(config_path))[0] if config_path else "run"
    return os.path.join(root, f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")


def create(path: str | None, config_path: str | None, name: str | None = None,
           overwrite: bool = False) -> str:
    """Make and claim a new run directory (its `status` file says `running`).

    `path` (--out) or runs/`name` (--name) must not exist or be empty, unless `overwrite`
    and it holds an earlier run; a default one is made unique with -2, -3, ...
    """
    if path is not None and name is not None:
        raise MbtrainError("give either --out DIR or --name NAME, not both")
    if name is not None:
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise MbtrainError(f"--name {name!r}: expected a plain directory name (no '/'), e.g. lr0.1")
        path = os.path.join("runs", name)
    if path is not None:
        return _claim_given(path, overwrite)
    base = default_dir(config_path)
    for i in range(1, 10_000):
        candidate = base if i == 1 else f"{base}-{i}"
        try:
            # os.makedirs is atomic on the last component: of two runs started in the same
            # second exactly one gets `base`, the other moves on to base-2
            os.makedirs(candidate)
        except FileExistsError:
            continue
        except OSError as e:
            raise MbtrainError(f"{candidate}: cannot create run directory: {e.strerror}") from None
        _claim(candidate)
        return candidate
    raise MbtrainError(f"{base}: cannot find a free run directory name")


def _claim_given(path: str, overwrite: bool) -> str:
    if os.path.exists(path) and not os.path.isdir(path):
        raise MbtrainError(f"{path}: exists and is not a directory; choose another --out")
    if os.path.isdir(path) and os.listdir(path):
        if not overwrite:
            raise MbtrainError(f"{path}: run directory already exists and is not empty; choose another "
                               f"--out/--name, continue it with --resume, or replace it with --overwrite")
        if not any(os.path.exists(os.path.join(path, f)) for f in RUN_MARKERS):
            # --overwrite empties earlier runs only, never an arbitrary folder such as `--out .`
            raise MbtrainError(f"{path}: --overwrite refused: not a run directory (it has none of "
                               f"{', '.join(RUN_MARKERS)})")
        if still_running(path):
            raise MbtrainError(f"{path}: --overwrite refused: its run is still running "
                               f"(pid {_read_run_json(path).get('pid')})")
        try:
            shutil.rmtree(path)
        except OSError as e:
            raise MbtrainError(f"{path}: cannot empty run directory for --overwrite: {e.strerror}") from None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise MbtrainError(f"{path}: cannot create run directory: {e.strerror}") from None
    _claim(path)
    return path


def _claim(path: str) -> None:
    """Create `status` exclusively, so two runs given the same directory cannot both use it."""
    try:
        fd = os.open(os.path.join(path, STATUS_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise MbtrainError(f"{path}: run directory was just taken by another run; choose another") from None
    except OSError as e:
        raise MbtrainError(f"{path}: cannot create run directory: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write("running\n")
    os.makedirs(os.path.join(path, "checkpoints"), exist_ok=True)


# ---------------------------------------------------------------- status and provenance

def write_status(run_dir: str, status: str) -> None:
    assert status in STATUSES, status
    write_text(run_dir, STATUS_FILE, status + "\n")


def read_status(run_dir: str) -> str | None:
    """The word in `status`, or None when there is no (readable) status file."""
    try:
        with open(os.path.join(run_dir, STATUS_FILE), encoding="utf-8") as f:
            word = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return word or None


def _read_run_json(run_dir: str) -> dict:
    try:
        with open(os.path.join(run_dir, "run.json"), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def still_running(run_dir: str) -> bool:
    """True when `status` says running and run.json names a live process on this host."""
    return read_status(run_dir) == "running" and _pid_state(run_dir) == "alive"


def process_gone(run_dir: str) -> bool:
    """True when `status` says running but its process on this host no longer exists: a run
    killed outright (SIGKILL, out of memory) leaves `running` behind."""
    return read_status(run_dir) == "running" and _pid_state(run_dir) == "gone"


def _pid_state(run_dir: str) -> str:
    """alive, gone, or unknown (no pid recorded, another host, or this very process)."""
    info = _read_run_json(run_dir)
    pid = info.get("pid")
    if not isinstance(pid, int) or pid == os.getpid() or info.get("host") != socket.gethostname():
        return "unknown"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except OSError:
        return "alive"          # exists, owned by another user
    return "alive"


def outcome(exc: BaseException | None) -> tuple[str, int]:
    """(status, exit code) of a `fit` that ended with `exc` (None: it returned)."""
    if exc is None:
        return "completed", 0
    if isinstance(exc, Diverged):
        return "diverged", Diverged.exit_code
    if isinstance(exc, (Interrupted, KeyboardInterrupt)):
        return "interrupted", Interrupted.exit_code
    if isinstance(exc, MbtrainError):
        return "failed", exc.exit_code
    return "failed", 1


class Tracker:
    """Keeps a run directory's `status` and run.json current over one `mbtrain fit`.

    On entry: status `running` and run.json (command line, overrides, versions, BLAS, pid);
    on every exit, normal or by exception: the final status, exit code and error message.
    SIGTERM outside the training loop (which saves a checkpoint on it) ends as `interrupted`.
    """

    def __init__(self, run_dir: str, argv: list[str], config_path: str | None, overrides: list[str],
                 resume: str | None = None, threads_limit: int = 0, blas_library: str = "numpy"):
        self.run_dir = run_dir
        self.status, self.exit_code, self.error = "running", None, None
        previous = _read_run_json(run_dir) if resume else {}
        self.info = {"command": argv, "cwd": os.getcwd(), "config_file": config_path,
                     "overrides": list(overrides), "resumed_from": resume,
                     "started_utc": _utc_now(), "host": socket.gethostname(), "pid": os.getpid(),
                     **environment.describe(threads_limit, blas_library)}
        if previous:
            # a resumed run keeps the record of how it was started
            self.info["earlier"] = previous.pop("earlier", []) + [previous]
        self._old_sigterm = None

    def __enter__(self) -> "Tracker":
        write_json(self.run_dir, "run.json", self.info)
        write_status(self.run_dir, "running")
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
        self.status, self.exit_code = outcome(exc)
        if exc is not None:
            self.error = str(exc) or type(exc).__name__
        try:
            write_status(self.run_dir, self.status)
            write_json(self.run_dir, "run.json", dict(self.info, ended_utc=_utc_now(), status=self.status,
                                                      exit_code=self.exit_code, error=self.error))
        except MbtrainError:
            if exc is None:         # a write failure must not hide the error that ended the run
                raise
        return False


def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def makedirs(path: str) -> None:
    """os.makedirs(exist_ok=True), or MbtrainError naming the folder."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise MbtrainError(f"{path}: cannot create folder: {e.strerror or e}") from None


def write_text(run_dir: str, name: str, text: str) -> None:
    write_atomic(os.path.join(run_dir, name), text.encode())


def write_json(run_dir: str, name: str, obj) -> None:
    write_text(run_dir, name, json.dumps(obj, indent=2) + "\n")


class MetricsLog:
    """metrics.csv: a header and one row per completed epoch, rewritten atomically each epoch."""

    def __init__(self, run_dir: str, completed_epochs: int = 0, columns: list[str] = METRICS):
        self.path = os.path.join(run_dir, "metrics.csv")
        self.columns = columns
        self.rows: list[dict] = []
        if completed_epochs and os.path.exists(self.path):
            with open(self.path, newline="") as f:
                # on resume keep exactly the epochs the checkpoint has completed
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= completed_epochs]

    def append(self, row: dict) -> None:
        self.rows.append({k: _fmt(row.get(k)) for k in self.columns})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(self.path, buf.getvalue().encode())


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)
