#!/bin/bash
# usage: fastsweep.sh NAME "SETS" seeds...   -> test acc per seed
name=$1; sets=$2; shift 2
cd /work/main
for s in "$@"; do
  out=/work/notes/s15/fast/$name-s$s
  rm -rf $out
  /work/venv-lead/bin/python -m mbtrain fit configs/mnist-fast.yaml --out $out --quiet --json --set seed=$s $sets > $out.json 2>$out.err
  python3 -c "import json,sys; d=json.load(open('$out.json')); print('$name', 'seed $s', d['test']['acc'], d['train_seconds'])"
done
