"""Why the NB201 supernet backward was slow on XLA CPU, and what fixed it: measured.

Times the gradient (w.r.t. the cell weights) of a stack of NAS-Bench-201 search cells
(C=16, 32x32, batch 64, softmax arch weights) in three formulations, for 1, 2 and 5
cells, each in its own process:

  xla           node = elementwise sum of the mixed ops, XLA's own conv autodiff
  xla_matid     + every node output through jnas.supernet.nb201.materialize
  jnas          + jnas.supernet.ops.conv2d (custom VJP; the committed JSON predates
                its 2026-11-26 change from contiguous-row filter GEMMs to XLA's own
                filter gradient, see jnas/supernet/ops.py)

The first grows superlinearly with depth; the others are linear. ``jnas`` is exactly
``jnas.supernet.nb201.cell``.

    python experiments/bench_step/cell_variants.py     # ~6 min on 2 CPU cores

Writes experiments/results/cell_variants.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "results" / "cell_variants.json"
EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))


def measure(variant: str, cells: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from jnas.supernet import nb201, ops

    c, batch, size = 16, 64, 32

    def conv(x, w, padding):
        return lax.conv_general_dilated(x, w, (1, 1), ((padding, padding),) * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def plain_cell(w1, w3, h0, a, materialize):
        nodes, incoming = [h0], {1: [], 2: [], 3: []}
        for i in range(3):
            h = nodes[i]
            r = jax.nn.relu(h)
            out = [e for e, (s, _) in enumerate(EDGES) if s == i]
            k3 = jnp.transpose(w3[np.asarray(out)], (1, 2, 3, 0, 4)).reshape(3, 3, c, -1)
            k1 = jnp.transpose(w1[np.asarray(out)], (1, 0, 2)).reshape(1, 1, c, -1)
            y3, y1, pooled = ops.batch_norm(conv(r, k3, 1)), ops.batch_norm(conv(r, k1, 0)), ops.avg_pool_3x3(h)
            for slot, e in enumerate(out):
                incoming[EDGES[e][1]].append(
                    a[e, 1] * h + a[e, 2] * y1[..., slot * c:(slot + 1) * c]
                    + a[e, 3] * y3[..., slot * c:(slot + 1) * c] + a[e, 4] * pooled)
            node = sum(incoming[i + 1])
            nodes.append(nb201.materialize(node) if materialize else node)
        return nodes[-1]

    def net(params, x, a):
        for w1, w3 in params:
            if variant == "jnas":
                x = nb201.cell(w1, w3, x, a)
            else:
                x = plain_cell(w1, w3, x, a, materialize=variant == "xla_matid")
        return jnp.mean(x ** 2)

    key = jax.random.key(0)
    params = [(0.2 * jax.random.normal(jax.random.fold_in(key, 2 * i), (6, c, c)),
               0.1 * jax.random.normal(jax.random.fold_in(key, 2 * i + 1), (6, 3, 3, c, c))) for i in range(cells)]
    x = jax.random.normal(key, (batch, size, size, c))
    a = jax.nn.softmax(1e-3 * jax.random.normal(key, (6, 5)))
    grad = jax.jit(jax.grad(net))
    t = time.perf_counter()
    jax.block_until_ready(grad(params, x, a))
    first = time.perf_counter() - t
    times = []
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(grad(params, x, a))
        times.append(time.perf_counter() - t)
    return {"variant": variant, "cells": cells, "grad_s": float(np.median(times)), "compile_and_first_s": first}


def main() -> int:
    if len(sys.argv) == 3:
        print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
        return 0
    rows = []
    for variant in ("jnas", "xla_matid", "xla"):
        for cells in (1, 2, 5):
            proc = subprocess.run([sys.executable, __file__, variant, str(cells)], capture_output=True, text=True, timeout=1800)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    import jax

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"jax": jax.__version__, "shape": "C=16, 32x32, batch 64", "rows": rows,
                               "command": "python experiments/bench_step/cell_variants.py"}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
