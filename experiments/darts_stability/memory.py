"""PC-DARTS's memory saving, measured: DARTS vs PC-DARTS (K=4) at the same batch.

For each method, in a fresh process (so peak RSS is its own):
  * the compiled search step's memory analysis (XLA's temp buffer size: activations
    kept for the backward pass plus scratch), at NAS-Bench-201's shape
    (C=16, N=5, batch 64 + 64, 32x32x3);
  * the same for one search cell alone (forward + backward of a stage-1 cell at
    batch 64): the mixed-op activation memory, which PC-DARTS divides by about K;
  * peak RSS after compiling and running two steps.

Command: python experiments/darts_stability/memory.py   (~3 min on 2 cores)
Output: results/memory.json beside this file.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(method: str, k: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jnas.search import darts
    from jnas.supernet import nb201 as supernet

    cfg = supernet.SupernetConfig(channels=16, cells=5, num_classes=10, in_channels=3, image_size=32,
                                  partial_channels=k)
    net = supernet.search_network(cfg, edge_normalization=k > 1)
    search = darts.make_darts(net, darts.DartsConfig(), 1000)
    state = search.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = lambda: darts.Batch(jnp.asarray(rng.standard_normal((64, 32, 32, 3)), jnp.float32),
                                jnp.asarray(rng.integers(0, 10, 64), jnp.int32))
    train, val = batch(), batch()
    compiled = jax.jit(search.step).lower(state, train, val).compile()
    step_mem = compiled.memory_analysis()

    p = 16 // k
    w1 = jnp.zeros((6, p, p))
    w3 = jnp.zeros((6, 3, 3, p, p))
    h0 = jnp.ones((64, 32, 32, 16))
    weights = jnp.full((6, 5), 0.2)
    edge = jnp.full((6,), 1.0) if k > 1 else None
    cell_loss = lambda w1, w3, h0, a: jnp.sum(supernet.cell(w1, w3, h0, a, edge) ** 2)
    cell_mem = jax.jit(jax.grad(cell_loss, argnums=(0, 1, 2, 3))).lower(w1, w3, h0, weights).compile().memory_analysis()

    for _ in range(2):
        state, metrics = compiled(state, train, val)
        jax.block_until_ready(metrics)
    return {
        "method": method,
        "partial_channels": k,
        "step_temp_bytes": int(step_mem.temp_size_in_bytes),
        "step_argument_bytes": int(step_mem.argument_size_in_bytes),
        "cell_fwd_bwd_temp_bytes": int(cell_mem.temp_size_in_bytes),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "supernet_params": supernet.count_params(state.params),
    }


def main() -> int:
    if len(sys.argv) == 3:  # child: one method
        print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
        return 0
    from jnas.bench import machine_description

    rows = []
    for method, k in (("darts", 1), ("pcdarts", 4)):
        out = subprocess.run([sys.executable, __file__, method, str(k)], check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr)
    darts_row, pc_row = rows
    result = {
        "shape": {"channels": 16, "cells": 5, "batch": 64, "image": [32, 32, 3]},
        "rows": rows,
        "ratios_darts_over_pcdarts": {
            key: darts_row[key] / pc_row[key] for key in ("step_temp_bytes", "cell_fwd_bwd_temp_bytes", "peak_rss_mb")
        },
        "machine": machine_description(),
    }
    out = HERE / "results" / "memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["ratios_darts_over_pcdarts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
