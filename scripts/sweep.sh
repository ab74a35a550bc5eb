#!/usr/bin/env bash
# A grid sweep over train.lr x train.batch_size, run in parallel, then one comparison table.
#
#   scripts/sweep.sh configs/mnist.yaml --set train.epochs=2
#   LRS="0.05 0.1 0.2" BATCH_SIZES="32 128" JOBS=2 scripts/sweep.sh configs/mnist.yaml
#
# Arguments after CONFIG are extra `--set KEY=VALUE` overrides given to every run.
# Environment: LRS (default "0.01 0.05 0.2"), BATCH_SIZES ("32 128"), JOBS (parallel runs,
# default the number of cores), SWEEP_DIR (default runs/sweep-<UTC time>), MBTRAIN (the
# command, default mbtrain).
#
# Every grid point is checked with `mbtrain config` before any run starts. Each run uses one
# BLAS thread (--set train.threads=1), so JOBS runs share the cores without oversubscribing
# them. A run that fails does not stop the others: it is listed at the end with the last
# line of its log, and the script exits 1. The table (stdout) is `mbtrain compare` sorted by
# validation accuracy.
set -uo pipefail

if [ $# -lt 1 ]; then
    echo "usage: scripts/sweep.sh CONFIG [--set KEY=VALUE]..." >&2
    exit 2
fi
config=$1
shift
lrs=${LRS:-0.01 0.05 0.2}
batch_sizes=${BATCH_SIZES:-32 128}
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
sweep_dir=${SWEEP_DIR:-runs/sweep-$(date -u +%Y%m%d-%H%M%S)}
mbtrain=${MBTRAIN:-mbtrain}
# one BLAS thread also for BLAS builds that read only these variables, at load time
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1

grid() {
    for lr in $lrs; do
        for batch_size in $batch_sizes; do
            echo "$lr $batch_size"
        done
    done
}

if [ -e "$sweep_dir" ] && [ -n "$(ls -A "$sweep_dir" 2>/dev/null)" ]; then
    echo "sweep: $sweep_dir already exists and is not empty; choose another SWEEP_DIR" >&2
    exit 2
fi

# 1. validate every grid point before launching anything (mbtrain config exits 2 on a bad one)
while read -r lr batch_size; do
    if ! $mbtrain config "$config" --set train.lr="$lr" --set train.batch_size="$batch_size" \
            --set train.threads=1 "$@" >/dev/null; then
        echo "sweep: grid point lr=$lr batch_size=$batch_size is invalid; nothing was run" >&2
        exit 2
    fi
done < <(grid)

# 2. run the grid, JOBS at a time. A run's messages go to .NAME.log, moved to NAME/fit.log
# when the run ends, so that SWEEP_DIR holds only run directories (mbtrain compare SWEEP_DIR/*)
mkdir -p "$sweep_dir"
echo "sweep: $(grid | wc -l) runs, $jobs at a time, in $sweep_dir" >&2
export SWEEP_DIR=$sweep_dir SWEEP_CONFIG=$config SWEEP_MBTRAIN=$mbtrain
# xargs appends "LR BATCH_SIZE" after the extra overrides; the inner script always exits 0
# so that xargs goes on past a failed run (the run's status file tells what happened)
grid | xargs -P "$jobs" -L 1 bash -c '
    lr=${@: -2:1}; batch_size=${@: -1}; extra=("${@:1:$#-2}")
    name="lr$lr-bs$batch_size"; log="$SWEEP_DIR/.$name.log"
    $SWEEP_MBTRAIN fit "$SWEEP_CONFIG" --out "$SWEEP_DIR/$name" --quiet --set train.lr="$lr" \
        --set train.batch_size="$batch_size" --set train.threads=1 "${extra[@]}" >"$log" 2>&1
    code=$?
    [ -d "$SWEEP_DIR/$name" ] && mv "$log" "$SWEEP_DIR/$name/fit.log"
    echo "sweep: $name exited $code" >&2
    exit 0
' sweep "$@"

# 3. report every run that did not complete, then the table
dirs=()
failed=0
while read -r lr batch_size; do
    dir="$sweep_dir/lr$lr-bs$batch_size"
    dirs+=("$dir")
    status=$(cat "$dir/status" 2>/dev/null || echo "missing")
    if [ "$status" != "completed" ]; then
        failed=$((failed + 1))
        log="$dir/fit.log"
        [ -f "$log" ] || log="$sweep_dir/.lr$lr-bs$batch_size.log"
        echo "sweep: FAILED $dir: $status: $(tail -n 1 "$log" 2>/dev/null)" >&2
    fi
done < <(grid)
$mbtrain compare "${dirs[@]}" --sort val_acc
if [ "$failed" -gt 0 ]; then
    echo "sweep: $failed of ${#dirs[@]} runs did not complete" >&2
    exit 1
fi
