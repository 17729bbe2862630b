"""The Pallas mixed-op kernel against XLA's own fusion, on the machine's default backend.

For NAS-Bench-201 node shapes (E incoming edges x K=5 candidate ops, activations
``(B, H, W, C)`` of the three stages) it checks the compiled kernel against the
float32 ``HIGHEST``-precision reference (forward and both gradients) and times, per
shape, the median of ``--reps`` calls of:

* ``pallas``: ``kernels.mixed_op.mixed_sum`` (compiled: Triton on GPU, Mosaic on TPU);
* ``xla``: what the supernet runs, the weighted sum as one ``jnp.einsum`` at default
  precision, which XLA fuses into a single loop;

each forward only and forward + VJP (gradients w.r.t. weights and candidates), and
the effective bandwidth (bytes of candidates read + output written over the time).
One call takes ~0.1 ms on a GPU, about what a dispatch from Python costs, so each
timing runs ``--inner`` applications inside one jitted ``fori_loop`` (the weights
change each iteration, so nothing can be hoisted out of the loop) and divides.

    python experiments/bench_step/kernel_bench.py --out kernel.json

On CPU the kernel runs in the Pallas interpreter (``--interpret``) and the timing is
meaningless; the script is meant for a GPU/TPU. Prints and writes one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
try:  # installed as jnas.kernels; from a bare checkout, the kernels/ folder
    from jnas.kernels import mixed_op
except ImportError:  # pragma: no cover - depends on how jnas was installed
    from kernels import mixed_op

from jnas.bench import machine_description

# (edges, batch, spatial, channels): the last node of each NB201 stage (3 incoming
# edges) at batch 64 and 256, plus a 1-edge node.
SHAPES = [
    (3, 64, 32, 16), (3, 64, 16, 32), (3, 64, 8, 64), (1, 64, 32, 16),
    (3, 256, 32, 16), (3, 256, 16, 32), (3, 256, 8, 64),
]
OPS = 5


def xla_sum(weights, candidates):
    return jnp.einsum("ek,ek...->...", weights, candidates)


def timed(fn, *args, reps: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def with_vjp(fn):
    def run(w, c):
        out, vjp = jax.vjp(fn, w, c)
        return vjp(jnp.ones_like(out))
    return jax.jit(run)


def looped(fn, inner: int, vjp: bool):
    """``inner`` dependent applications of ``fn`` (or its VJP) in one jitted loop."""
    def body(i, carry):
        w, c, acc = carry
        w = w + 1e-7 * acc[0]  # depends on the previous iteration: no hoisting, no CSE
        if vjp:
            out, pull = jax.vjp(fn, w, c)
            gw, gc = pull(jnp.ones_like(out))
            return w, c, acc + jnp.stack([gw.sum(), gc.sum()])
        out = fn(w, c)
        return w, c, acc + jnp.stack([out.sum(), 0.0])
    return jax.jit(lambda w, c: lax.fori_loop(0, inner, body, (w, c, jnp.zeros(2, c.dtype)))[2])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--interpret", action="store_true", help="Pallas interpreter (CPU smoke run)")
    p.add_argument("--shapes", type=int, default=len(SHAPES), help="first N shapes only")
    p.add_argument("--inner", type=int, default=1, help="applications per timed jitted call (see above)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    interpret = True if args.interpret else None
    pallas = lambda w, c: mixed_op.mixed_sum(w, c, interpret=interpret)  # noqa: E731
    rows = []
    for edges, batch, spatial, channels in SHAPES[: args.shapes]:
        key = jax.random.key(edges * 1000 + spatial)
        kw, kc = jax.random.split(key)
        w = jax.nn.softmax(jax.random.normal(kw, (edges, OPS)), axis=-1)
        c = jax.random.normal(kc, (edges, OPS, batch, spatial, spatial, channels), jnp.float32)
        ref = mixed_op.mixed_sum_reference(w, c)
        out = jax.jit(pallas)(w, c)
        gw_ref, gc_ref = with_vjp(mixed_op.mixed_sum_reference)(w, c)
        gw, gc = with_vjp(pallas)(w, c)
        errors = {
            "forward": float(jnp.max(jnp.abs(out - ref))),
            "grad_weights_rel": float(jnp.max(jnp.abs(gw - gw_ref)) / jnp.max(jnp.abs(gw_ref))),
            "grad_candidates": float(jnp.max(jnp.abs(gc - gc_ref))),
        }
        nbytes = (c.size + ref.size) * 4
        row = {"edges": edges, "ops": OPS, "activation": [batch, spatial, spatial, channels],
               "bytes_moved_forward": nbytes, "max_error": errors}
        for name, fn in (("pallas", pallas), ("xla", xla_sum)):
            fwd = timed(looped(fn, args.inner, False), w, c, reps=args.reps) / args.inner
            bwd = timed(looped(fn, args.inner, True), w, c, reps=args.reps) / args.inner
            row[name] = {"forward_s": fwd, "forward_vjp_s": bwd, "forward_GBps": nbytes / fwd / 1e9}
        row["xla_over_pallas_forward"] = row["xla"]["forward_s"] / row["pallas"]["forward_s"]
        row["xla_over_pallas_forward_vjp"] = row["xla"]["forward_vjp_s"] / row["pallas"]["forward_vjp_s"]
        print(json.dumps({k: row[k] for k in ("edges", "activation", "max_error",
                                               "xla_over_pallas_forward", "xla_over_pallas_forward_vjp")}),
              flush=True)
        rows.append(row)

    record = {
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "machine": machine_description(),
        "jax": jax.__version__,
        "interpret": bool(args.interpret),
        "reps": args.reps,
        "inner": args.inner,
        "rows": rows,
        "geomean_xla_over_pallas_forward": float(np.exp(np.mean(np.log(
            [r["xla_over_pallas_forward"] for r in rows])))),
        "geomean_xla_over_pallas_forward_vjp": float(np.exp(np.mean(np.log(
            [r["xla_over_pallas_forward_vjp"] for r in rows])))),
        "command": f"python experiments/bench_step/kernel_bench.py --reps {args.reps} --inner {args.inner}",
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("device", "geomean_xla_over_pallas_forward",
                                              "geomean_xla_over_pallas_forward_vjp")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
