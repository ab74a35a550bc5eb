#!/bin/bash
# Every figure of the README's Performance section, in one run (~8 minutes on 2 cores):
#
#   bash benchmarks/measure.sh [OUTDIR]          # default: measure-<UTC time>
#   python benchmarks/summarize.py OUTDIR...     # the README's table over one run or many
#
# mbtrain bench three times per setting with --json and once as a table (A, B, Nielsen's
# chapter 1, each config with its own train.threads; B once more on one thread), the framework
# comparison, configs/mnist-fast.yaml three times, and the peak RSS of
# `mbtrain fit configs/mnist.yaml`; the machine's load (benchmarks/probe.py) at the start,
# middle and end. Leave the machine otherwise idle while it runs.
#
# PYTHON: the Python with mbtrain installed (default: python). COMPARE_PYTHON: the one that also
# has PyTorch and scikit-learn for benchmarks/compare.py (default: PYTHON; a framework that is
# not installed is skipped).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:-measure-$(date -u +%Y%m%dT%H%M%S)}")
py=${PYTHON:-python}
compare_py=${COMPARE_PYTHON:-$py}
mkdir -p "$out"
cd "$root"
bench() { "$py" -m mbtrain bench "$@"; }

"$py" benchmarks/probe.py | tee "$out/probe-start.txt"
for i in 1 2 3; do
  bench configs/bench-a.yaml --json > "$out/bench-a-$i.json"
  bench configs/bench-b.yaml --json > "$out/bench-b-$i.json"
  bench configs/nielsen-ch1.yaml --json > "$out/nielsen-$i.json"
done
bench configs/bench-b.yaml --set train.threads=1 --json > "$out/bench-b-t1.json"
bench configs/bench-a.yaml > "$out/bench-a-table.txt" 2>&1
bench configs/bench-b.yaml > "$out/bench-b-table.txt" 2>&1
bench configs/nielsen-ch1.yaml > "$out/nielsen-table.txt" 2>&1
"$py" benchmarks/probe.py | tee "$out/probe-mid.txt"
"$compare_py" benchmarks/compare.py > "$out/compare.txt" 2> "$out/compare.err"
for i in 1 2 3; do
  "$py" -m mbtrain fit configs/mnist-fast.yaml --out "$out/fast-$i" --quiet --json > "$out/fast-$i.json"
done
# peak RSS of a child process: ru_maxrss of the children once it has exited (KiB on Linux)
"$py" - "$py" "$out" <<'EOF' > "$out/mnist-rss.json"
import json, resource, subprocess, sys
py, out = sys.argv[1], sys.argv[2]
subprocess.run([py, "-m", "mbtrain", "fit", "configs/mnist.yaml", "--out", f"{out}/mnist", "--quiet", "--json"],
               check=True, stdout=open(f"{out}/mnist.json", "w"))
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
EOF
"$py" benchmarks/probe.py | tee "$out/probe-end.txt"
echo "done: python benchmarks/summarize.py $out"
