"""Peak memory of `mbtrain fit` on memory-mapped .npy data as the data grows 10x.

For each size, generates x.npy (float32, N x 784) and y.npy (int64) in a temporary folder,
trains one epoch on it in a child process (`python -m mbtrain fit`), and reads the child's
peak resident set size (ru_maxrss from wait4). Then deletes the data. Bounded memory means
the peak stays flat (within 10 %) while the data grows 10x.

    nice -n 5 python benchmarks/memory.py                    # 0.5 GB and 5 GB (needs ~6 GB free disk)
    nice -n 5 python benchmarks/memory.py --sizes-mb 50 500  # a quicker run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml

FEATURES, CLASSES = 784, 10


def generate(folder: str, megabytes: float, seed: int = 0) -> int:
    """Write x.npy (N, 784) float32 and y.npy (N,) int64 of about `megabytes` MB; returns N."""
    n = int(megabytes * 1e6 // (FEATURES * 4))
    rng = np.random.default_rng(seed)
    x = np.lib.format.open_memmap(os.path.join(folder, "x.npy"), "w+", np.float32, (n, FEATURES))
    y = np.lib.format.open_memmap(os.path.join(folder, "y.npy"), "w+", np.int64, (n,))
    centers = rng.random((CLASSES, FEATURES), dtype=np.float32)
    step = 16384
    for s in range(0, n, step):                      # a chunk at a time: the generator stays small too
        labels = rng.integers(0, CLASSES, min(step, n - s))
        x[s:s + len(labels)] = centers[labels] + 0.1 * rng.standard_normal((len(labels), FEATURES),
                                                                            dtype=np.float32)
        y[s:s + len(labels)] = labels
    x.flush()
    y.flush()
    del x, y
    return n


def generate_in_child(folder: str, megabytes: float) -> int:
    """generate() in a child process: a child's peak RSS counts what it inherited at fork, so the
    parent that starts the training runs must never hold the generated pages itself."""
    code = f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); " \
           f"import memory; print(memory.generate({folder!r}, {megabytes!r}))"
    return int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                              text=True).stdout)


def train_child(folder: str, shuffle: str, prefetch: str) -> dict:
    """One epoch of `mbtrain fit` on folder/x.npy, y.npy in a child; its peak RSS and wall time."""
    # a fixed validation count: its evaluation batches (train.eval_batch_size rows) stay the same size
    cfg = {"seed": 0, "data": {"train": folder, "validation": 8192, "shuffle": shuffle, "prefetch": prefetch},
           "model": {"layers": [FEATURES, 32, CLASSES]},
           "train": {"epochs": 1, "batch_size": 256, "lr": 0.05, "threads": 1}}
    path = os.path.join(folder, f"{shuffle}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    run_dir = os.path.join(folder, f"run-{shuffle}-{prefetch}")
    out_path, err_path = os.path.join(folder, "out.json"), os.path.join(folder, "err.txt")
    start = time.perf_counter()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mbtrain", "fit", path, "--out", run_dir, "--quiet",
                                 "--json"], stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)        # this child's own rusage, peak RSS included
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"mbtrain fit failed:\n{open(err_path).read()}")
    summary = json.load(open(out_path))
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1),          # ru_maxrss is in KiB on Linux
            "seconds": round(seconds, 1), "samples_per_second": summary["samples_per_second"],
            "val_acc": summary["final"].get("val_acc")}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[500, 5000])
    parser.add_argument("--shuffles", nargs="+", default=["full", "blocks"])
    parser.add_argument("--prefetch", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--dir", default=None, help="where to put the temporary data (default: the system temp)")
    args = parser.parse_args()
    rows = []
    for megabytes in sorted(args.sizes_mb):
        folder = tempfile.mkdtemp(prefix="mbtrain-memory-", dir=args.dir)
        try:
            start = time.perf_counter()
            n = generate_in_child(folder, megabytes)
            made = time.perf_counter() - start
            size = sum(os.path.getsize(os.path.join(folder, f)) for f in ("x.npy", "y.npy"))
            print(f"parent RSS before the training runs: {_rss_mb():.0f} MB", file=sys.stderr)
            for shuffle in args.shuffles:
                result = train_child(folder, shuffle, args.prefetch)
                rows.append({"data_mb": round(size / 1e6), "samples": n, "shuffle": shuffle,
                             "generate_seconds": round(made, 1), **result})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print(table(rows))


def table(rows: list[dict]) -> str:
    lines = ["| data | samples | shuffle | peak RSS | fit wall time | samples/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['data_mb'] / 1000:.2f} GB | {r['samples']:,} | {r['shuffle']} | "
                     f"{r['peak_rss_mb']:.0f} MB | {r['seconds']:.0f} s | {r['samples_per_second']:,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
