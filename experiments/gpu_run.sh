#!/usr/bin/env bash
# Every GPU figure jnas records, in one pass (a lent GPU's time is scarce: ~8 minutes on
# an H100/H200). Each part has its own time limit and writes one JSON; after every part
# they are packed into $OUT/results.tgz, so a run cut short still returns what it did.
# The merge into the committed results is experiments/gpu_merge.py.
#
#   OUT=gpu-out JNAS_NB201_TABLE=/path/nb201_cifar10.csv bash experiments/gpu_run.sh
#
# Optional: XAUTODL_WHEEL=path/xautodl-1.0.0-py3-none-any.whl adds the PyTorch reference
# (the GPU's own torch, the NAS-Bench-201 authors' xautodl supernet) on the same GPU.
# PARTS="step synflow" runs only those parts (default: all of kernel step vmap synflow
# nwot data inits scaling); gpu_merge.py keeps the committed files of the parts not run.
# DATA_PROXIES="snip:50 ..." picks the data part's proxies and chunk sizes.
set -uo pipefail
PARTS=" ${PARTS:-kernel step vmap synflow nwot data inits scaling} "
want() { [[ "$PARTS" == *" $1 "* ]]; }
OUT=${OUT:-gpu-out}
PY=${PY:-python3}
R=${R:-/tmp/jnas-gpu/r}
mkdir -p "$R" "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
part() { [ -d "$R" ] && tar czf "$OUT/results.tgz" -C "$(dirname "$R")" "$(basename "$R")"; echo "== $1 ($(date +%T))"; }

part env
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$R/nvidia_smi.txt"
$PY -c "import jax, flax, optax; print('jax', jax.__version__, jax.devices())" || exit 1

if [ -n "${XAUTODL_WHEEL:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/xsite "$XAUTODL_WHEEL" && X=/tmp/xsite
fi

want kernel && part kernel && timeout 100 $PY experiments/bench_step/kernel_bench.py --reps 10 --inner 50 --out "$R/kernel.json"

for order in 1 2; do
  want step || break
  part "jnas step order $order"
  timeout 150 $PY -m jnas.cli bench step --order "$order" --steps 10 --warmup 2 --json | tee "$R/step$order.json"
  if [ -n "${X:-}" ]; then
    part "pytorch step order $order"
    PYTHONPATH="$X" timeout 90 $PY experiments/bench_step/pytorch_reference.py --device cuda --order "$order" \
      --batch-size 64 --channels 16 --cells 5 --steps 10 --warmup 2 --json | tee "$R/torch$order.json"
  fi
done

want vmap && part "vmapped forward" && timeout 90 $PY - <<'EOF' | tee "$R/vmap.json"
import json, sys
sys.path.insert(0, "experiments/bench_step")
from compare import vmapped_forward
print(json.dumps(vmapped_forward(64, 64, 16, 5)))
EOF

want synflow && part "synflow, all 15,625 cells" && timeout 150 $PY experiments/zero_cost/bench_proxies.py --proxy synflow --archs 15625 --chunk 625 --loop-archs 50 \
  --out "$R/proxy_synflow.json"
want nwot && part "nwot, all 15,625 cells" && timeout 150 $PY experiments/zero_cost/bench_proxies.py --proxy nwot --archs 15625 --chunk 625 --loop-archs 50 \
  --batch-size 64 --out "$R/proxy_nwot.json"
# Data-dependent proxies over the whole space (Gaussian batch of 16, as the CPU rows; each
# distinct pruned cell scored once): chunk sizes keep the per-slot gradient records in memory.
for spec in ${DATA_PROXIES:-jacob_cov:125 snip:50 grad_norm:50 fisher:50 grasp:50}; do
  want data || break
  proxy=${spec%%:*}; chunk=${spec##*:}
  part "$proxy, all 15,625 cells (pruned)"
  timeout "${DATA_LIMIT:-110}" $PY experiments/zero_cost/bench_proxies.py --proxy "$proxy" --archs 15625 --chunk "$chunk" \
    --loop-archs 25 --batch-size 16 --prune --out "$R/proxy_$proxy.json"
done

want inits && part "synflow, 2048 inits of 32 cells" && timeout 120 $PY -m jnas.cli score --proxy synflow --archs 32 --inits 2048 --chunk 32 --seed 0 --no-progress \
  --out "$R/inits.csv" --nb201-table "$JNAS_NB201_TABLE" --json | tee "$R/inits.json"

want scaling && part "data-parallel step, 1 real device" && timeout 90 $PY experiments/scaling/run.py --real --devices 1 --out "$R/scaling.json"

rm -f "$R/inits.csv"
part done
