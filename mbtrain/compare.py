"""Comparing runs: one row per run directory with the settings that differ between the runs
(from their resolved configs), their status, and their final and best metrics.

Missing, corrupt, failed, diverged and still-running runs all keep their row, with the
reason in `note`, so a sweep's table never silently loses a run.

    mbtrain compare runs/sweep/* --sort val_acc
"""

from __future__ import annotations

import csv
import io
import json
import math
import os

from mbtrain import runs
from mbtrain.config import config_from_yaml_text
from mbtrain.errors import MbtrainError

METRIC_COLUMNS = ["epochs", "train_loss", "train_acc", "val_loss", "val_acc",
                  "best_epoch", "best_val_loss", "best_val_acc", "test_acc"]
TABLE_HIDDEN = ("train_acc", "best_val_loss")
# columns where larger is better sort descending; everything else ascending
DESCENDING_SUFFIX = "acc"


def read_metrics(run_dir: str) -> list[dict]:
    """metrics.csv as a list of {column: float or None}; [] when it does not exist yet."""
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.exists(path):
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [{k: _float(v, path) for k, v in row.items()} for row in rows]
    except (OSError, UnicodeDecodeError, csv.Error, TypeError, AttributeError) as e:
        raise MbtrainError(f"{path}: unreadable metrics: {e}") from None


def _float(value, path: str):
    if value in ("", None):
        return None
    try:
        return float(value)
    except ValueError:
        raise MbtrainError(f"{path}: not a number in metrics: {value!r}") from None


def read_run(run_dir: str) -> tuple[dict, dict]:
    """(row, settings) of one run: status, note and metrics; flat {dotted key: value} config."""
    row = {"run": run_dir, "status": None, "note": ""}
    if not os.path.exists(run_dir):
        return dict(row, status="missing", note="no such directory"), {}
    if not os.path.isdir(run_dir):
        return dict(row, status="corrupt", note="not a directory"), {}
    status = runs.read_status(run_dir)
    settings, notes = {}, []
    try:
        with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8") as f:
            cfg = config_from_yaml_text(f.read(), os.path.join(run_dir, "config.yaml"))
        settings = flatten(cfg.to_dict())
    except (OSError, UnicodeDecodeError) as e:
        notes.append(f"no readable config.yaml ({e.strerror or e})")
    except MbtrainError as e:
        notes.append(str(e))
    try:
        row.update(_metrics(run_dir, read_metrics(run_dir)))
    except MbtrainError as e:
        notes.append(str(e))
    if status not in runs.STATUSES:
        # an old run without a status file still counts as completed when it wrote its summary
        status = "completed" if status is None and os.path.exists(os.path.join(run_dir, "summary.json")) \
            else "corrupt"
        if status == "corrupt":
            notes.insert(0, "not a run directory (no valid status file)")
    elif runs.process_gone(run_dir):
        notes.append("its process is gone (killed?)")
    elif status in ("failed", "diverged", "interrupted"):
        notes.append(_read_json(os.path.join(run_dir, "run.json")).get("error") or "")
    if notes and status == "completed" and not settings:
        status = "corrupt"
    return dict(row, status=status, note="; ".join(n for n in notes if n)), settings


def _metrics(run_dir: str, rows: list[dict]) -> dict:
    """Final and best (lowest val_loss, else train_loss, as train.py picks best.npz) metrics."""
    if not rows:
        return {}
    final = rows[-1]
    best = min(rows, key=lambda r: _score(r))
    out = {"epochs": _int(final.get("epoch"))}
    for k in ("train_loss", "train_acc", "val_loss", "val_acc"):
        out[k] = final.get(k)
    out["best_epoch"] = _int(best.get("epoch"))
    out["best_val_loss"], out["best_val_acc"] = best.get("val_loss"), best.get("val_acc")
    test = _read_json(os.path.join(run_dir, "summary.json")).get("test")
    if isinstance(test, dict) and isinstance(test.get("acc"), (int, float)):
        out["test_acc"] = float(test["acc"])
    return out


def _score(row: dict) -> float:
    score = row.get("val_loss") if row.get("val_loss") is not None else row.get("train_loss")
    return score if score is not None and math.isfinite(score) else math.inf


def _int(value):
    return None if value is None else int(value)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}; lists and {x, y} sources stay whole values."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and prefix == "":
            flat.update(flatten(value, key + "."))
        else:
            flat[prefix + key] = value
    return flat


def compare(run_dirs: list[str], sort: str | None = None, reverse: bool = False) -> dict:
    """{"settings": keys that differ, "columns": all columns, "runs": one row per run}."""
    loaded = [read_run(d) for d in run_dirs]
    configs = [s for _, s in loaded if s]
    keys = sorted({k for s in configs for k in s})
    differing = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in configs}) > 1]
    rows = [{"run": r["run"], "status": r["status"], **{k: s.get(k) for k in differing},
             **{m: r.get(m) for m in METRIC_COLUMNS}, "note": r["note"]} for r, s in loaded]
    columns = ["run", "status", *differing, *METRIC_COLUMNS, "note"]
    if sort is not None:
        rows = sort_rows(rows, sort, columns, reverse)
    return {"settings": differing, "columns": columns, "runs": rows}


def sort_rows(rows: list[dict], key: str, columns: list[str], reverse: bool = False) -> list[dict]:
    """Best first: descending for *acc columns, ascending otherwise; rows without a value last."""
    if key not in columns:
        raise MbtrainError(f"--sort {key!r}: no such column; choose one of {', '.join(columns)}")
    present = [r for r in rows if r.get(key) is not None]
    absent = [r for r in rows if r.get(key) is None]
    descending = key.endswith(DESCENDING_SUFFIX) != reverse
    present.sort(key=lambda r: _sort_key(r[key]), reverse=descending)
    return present + absent


def _sort_key(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, json.dumps(value, sort_keys=True))


# ---------------------------------------------------------------- output

def to_json(result: dict) -> str:
    return json.dumps(result)


def to_csv(result: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(result["columns"])
    for row in result["runs"]:
        writer.writerow(["" if row[c] is None else _cell(row[c], digits=None) for c in result["columns"]])
    return buf.getvalue()


def to_table(result: dict, note_width: int = 70) -> str:
    """Aligned columns for a terminal: settings as given, metrics to 4 decimals, '-' for no value.

    Leaves out train_acc and best_val_loss to fit a terminal (--csv and --json have them).
    """
    columns = [c for c in result["columns"] if c not in TABLE_HIDDEN]
    settings = set(result["settings"])
    cells = [[c for c in columns]]
    for row in result["runs"]:
        line = ["-" if row[c] in (None, "") else _cell(row[c], digits=None if c in settings else 4)
                for c in columns]
        if len(line[-1]) > note_width:
            line[-1] = line[-1][:note_width - 3] + "..."
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    numeric = [all(_is_number(row[c]) or row[c] is None for row in result["runs"]) for c in columns]
    out = []
    for line in cells:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(line, widths, numeric)]
        out.append("  ".join(parts).rstrip())
    return "\n".join(out) + "\n"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value, digits: int | None) -> str:
    if isinstance(value, float) and digits is not None:
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value).lower() if isinstance(value, bool) else str(value)
