"""Where mbtrain stands against its performance targets, over one or more runs of benchmarks/measure.sh.

For each target: the median and range of the figure over every run given, and how many runs
met it (README, Performance: the table at its top is this script's output over every run
since the sixth session). With --runs, one line per run directory first.

    python benchmarks/summarize.py measure-20261128T214806 measure-20261128T215637
    python benchmarks/summarize.py --runs measure-*
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import sys
from typing import NamedTuple


class Target(NamedTuple):
    name: str
    goal: str
    minimum: float | None          # met when the figure is >= minimum (None: a maximum, below)
    maximum: float | None = None   # met when the figure is <= maximum
    unit: str = ""
    spec: str = ".2f"              # how a figure is printed


TARGETS = {
    "a_bound": Target("A (784-100-10, batch 64, 1 thread): `vectorized / gemm_bound`", "≥ 0.70", 0.70),
    "a_torch": Target("A: × PyTorch (one epoch)", "≥ 2.0×", 2.0, unit="×"),
    "a_sklearn": Target("A: × scikit-learn", "≥ 2.0×", 2.0, unit="×"),
    "b_bound": Target("B (784-1024-1024-10, batch 256, 2 threads): `vectorized / gemm_bound`", "≥ 0.90", 0.90),
    "b_torch": Target("B: × PyTorch", "≥ 1.1×", 1.1, unit="×"),
    "b_sklearn": Target("B: × scikit-learn", "≥ 1.3×", 1.3, unit="×"),
    "nielsen": Target("Nielsen ch. 1 (784-30-10 sigmoid, batch 10): × the per-sample loop", "≥ 8×", 8.0, unit="×"),
    "rss": Target("peak RSS of `mbtrain fit configs/mnist.yaml`", "≤ 250 MB", None, 250.0, " MB", ".0f"),
    "fast": Target("`configs/mnist-fast.yaml`: seconds of training to its test accuracy (≥ 98 %)", "≤ 5 s",
                   None, 5.0, " s"),
}


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _json_runs(folder: str, kind: str) -> list[dict]:
    return [json.loads(_read(f)) for f in sorted(glob.glob(os.path.join(folder, f"{kind}-[0-9].json")))]


def _compare(folder: str) -> dict[str, float]:
    """The 'mbtrain is N.NNx' ratios of benchmarks/compare.py's output: {a_torch: ..., b_sklearn: ...}."""
    path = os.path.join(folder, "compare.txt")
    if not os.path.exists(path):
        return {}
    found = {}
    for block in _read(path).split("setting ")[1:]:
        setting = block[0].lower()
        for framework, key in (("pytorch", "torch"), ("sklearn", "sklearn")):
            m = re.search(rf"^{framework}\s+\S+\s+\S+\s+([\d.]+)x", block, re.M)
            if m:
                found[f"{setting}_{key}"] = float(m.group(1))
    return found


def _peak_rss_mb(folder: str) -> float | None:
    path = os.path.join(folder, "mnist-rss.json")
    if os.path.exists(path):
        return json.loads(_read(path))["peak_rss_mb"]
    path = os.path.join(folder, "mnist-time.txt")          # /usr/bin/time -v, as earlier runs measured it
    if os.path.exists(path):
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", _read(path))
        return int(m.group(1)) / 1024 if m else None
    return None


def _fast(folder: str) -> list[tuple[float, float]]:
    """(train_seconds, test accuracy) of each mnist-fast run."""
    runs = []
    for f in sorted(glob.glob(os.path.join(folder, "fast-[0-9].json"))):
        summary = json.loads(_read(f).strip().splitlines()[-1])
        runs.append((summary["train_seconds"], summary["test"]["acc"]))
    return runs


def _probes(folder: str) -> list[float]:
    ms = []
    for moment in ("start", "mid", "end"):
        path = os.path.join(folder, f"probe-{moment}.txt")
        m = re.search(r"median ([\d.]+) ms", _read(path)) if os.path.exists(path) else None
        if m:
            ms.append(float(m.group(1)))
    return ms


def figures(folder: str) -> dict[str, list[float]]:
    """Every figure of one run directory, by target key; 'fast' holds the seconds of runs that reached 98 %."""
    out: dict[str, list[float]] = {key: [] for key in TARGETS}
    out["a_bound"] = [r["vectorized_over_gemm_bound"] for r in _json_runs(folder, "bench-a")]
    out["b_bound"] = [r["vectorized_over_gemm_bound"] for r in _json_runs(folder, "bench-b")]
    out["nielsen"] = [r["speedup_over_per_sample"] for r in _json_runs(folder, "nielsen")]
    for key, ratio in _compare(folder).items():
        out[key].append(ratio)
    rss = _peak_rss_mb(folder)
    out["rss"] = [rss] if rss is not None else []
    out["fast"] = [seconds if acc >= 0.98 else float("inf") for seconds, acc in _fast(folder)]
    return out


def met(target: Target, value: float) -> bool:
    return value >= target.minimum if target.minimum is not None else value <= target.maximum


def _fmt(value: float, target: Target) -> str:
    if value == float("inf"):
        return "under 98 %"
    return f"{value:{target.spec}}{target.unit}"


def table(folders: list[str]) -> str:
    """The Markdown table: target, median (range), the goal, and how many runs met it."""
    merged: dict[str, list[float]] = {key: [] for key in TARGETS}
    for folder in folders:
        for key, values in figures(folder).items():
            merged[key] += values
    lines = ["| | median (range) | target | runs that met it |", "|---|---|---|---|"]
    for key, target in TARGETS.items():
        values = merged[key]
        if not values:
            lines.append(f"| {target.name} | no figures | {target.goal} | |")
            continue
        median = statistics.median(values)
        lines.append(f"| {target.name} | {_fmt(median, target)} ({_fmt(min(values), target)}–"
                     f"{_fmt(max(values), target)}) | {target.goal} | "
                     f"{sum(met(target, v) for v in values)} of {len(values)} |")
    return "\n".join(lines)


def run_line(folder: str) -> str:
    """One run: its probe readings and every figure, in order."""
    f = figures(folder)
    parts = [f"{os.path.basename(os.path.normpath(folder))}: probe {', '.join(f'{p:.1f}' for p in _probes(folder))} ms"]
    for key in ("a_bound", "b_bound", "nielsen", "a_torch", "a_sklearn", "b_torch", "b_sklearn", "fast", "rss"):
        parts.append(f"{key} {', '.join(_fmt(v, TARGETS[key]) for v in f[key])}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="output directories of benchmarks/measure.sh")
    parser.add_argument("--runs", action="store_true", help="one line per run directory first")
    args = parser.parse_args(argv)
    missing = [f for f in args.folders if not os.path.isdir(f)]
    if missing:
        print(f"error: {missing[0]}: not a directory (expected an output directory of benchmarks/measure.sh)",
              file=sys.stderr)
        return 2
    if args.runs:
        for folder in args.folders:
            print(run_line(folder))
        print()
    print(table(args.folders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
