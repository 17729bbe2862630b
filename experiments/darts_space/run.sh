#!/usr/bin/env bash
# The DARTS-space experiment at CPU scale: searches on RobustDARTS's S3 (and S2 with
# SPACES="darts-s3 darts-s2") with DARTS vs PC-DARTS vs β-DARTS, then a short from-scratch
# training of each derived cell, then the summary (summary.json, plots, table).
#   DATA_DIR=/usr/share/datasets/fashion-mnist experiments/darts_space/run.sh [OUT_DIR]
# Without DATA_DIR the data set comes from tfds (needs internet). Finished runs are
# skipped, so rerunning continues where it stopped. PARALLEL=1 runs the searches (then
# the trainings) concurrently, for a machine with cores and an accelerator to spare;
# JNAS overrides the command (e.g. JNAS="python3 -m jnas.cli").
set -euo pipefail
OUT=${1:-experiments/darts_space/results}
DATA=${DATA:-fashion_mnist}
SPACES=${SPACES:-darts-s3}
METHODS=${METHODS:-darts pcdarts beta-darts}
JNAS=${JNAS:-jnas}
DIR_ARGS=()
if [ -n "${DATA_DIR:-}" ]; then DIR_ARGS=(--data-dir "$DATA_DIR"); fi
mkdir -p "$OUT"
launch() { if [ -n "${PARALLEL:-}" ]; then "$@" & else "$@"; fi; }
for space in $SPACES; do
  for method in $METHODS; do
    [ -f "$OUT/search-$space-$method/result.json" ] && continue
    launch $JNAS search --space "$space" --method "$method" --dataset "$DATA" "${DIR_ARGS[@]}" --limit 2000 \
      --epochs 15 --channels 8 --cells 5 --batch-size 32 --seed 0 --hessian-every 5 --hessian-batches 2 \
      --hessian-iters 10 --no-progress --out "$OUT/search-$space-$method" --overwrite
  done
done
wait
for run in "$OUT"/search-*; do
  name=$(basename "$run"); name=${name#search-}
  [ -f "$OUT/train-$name/result.json" ] && continue
  genotype=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['genotype'])" "$run/result.json")
  launch $JNAS train --genotype "$genotype" --dataset "$DATA" "${DIR_ARGS[@]}" --limit 5000 --layers 6 \
    --channels 16 --epochs 4 --batch-size 64 --auxiliary --cutout --no-progress --out "$OUT/train-$name" --overwrite
done
wait
python3 "$(dirname "$0")/summarize.py" "$OUT"
