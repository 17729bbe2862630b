#!/usr/bin/env bash
# The DARTS-space experiment at CPU scale: S2/S3 searches with DARTS vs β-DARTS / PC-DARTS,
# then a short from-scratch training of the derived cells. Needs `jnas search --space darts-s*`
# (wired by jnas/search/runner.py). Usage: experiments/darts_space/run.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-experiments/darts_space/results}
DATA=${DATA:-fashion_mnist}
mkdir -p "$OUT"
for space in darts-s2 darts-s3; do
  for method in darts beta-darts pcdarts; do
    jnas search --space "$space" --method "$method" --dataset "$DATA" --limit 2000 --epochs 10 \
      --channels 8 --cells 5 --batch-size 32 --seed 0 --out "$OUT/search-$space-$method" --overwrite
  done
done
for run in "$OUT"/search-*; do
  genotype=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['genotype'])" "$run/result.json")
  jnas train --genotype "$genotype" --dataset "$DATA" --limit 5000 --layers 8 --channels 16 \
    --epochs 10 --batch-size 64 --auxiliary --cutout --out "$OUT/train-$(basename "$run")" --overwrite
done
