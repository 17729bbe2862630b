"""Where the CPU time of the DARTS search step goes: ablations and per-convolution throughput.

    python experiments/bench_step/ablate.py --out experiments/results/step_ablation.json

Part 1 compiles the NAS-Bench-201 search step (batch 64 + 64, C=16, N=5) several
times in ONE process, each time with one ingredient of the cell replaced by a
near-free stand-in of the same shapes (so the rest of the graph, its fusions and its
gradient flow stay as they are), and times the variants alternately (the machine's
drift cancels). The stand-ins break the model; they exist to attribute time, and the
step is never used for anything else:

* ``no_conv_arithmetic``: every supernet convolution (forward, input and filter
  gradients, and the pads and relayouts around them) becomes a broadcast;
* ``no_filter_gradients``: convolutions keep forward and input gradient, the filter
  gradient is zeros (what an α-only pass computes);
* ``no_avg_pool``: ``avg_pool_3x3`` is the identity;
* ``no_batchnorm_statistics``: BatchNorm is its affine part only.

Part 2 times the three convolutions of every source node of a cell (forward, input
gradient and filter gradient, exactly as ``jnas.supernet.ops.conv2d`` and its VJP form
them) at each stage's shape, as GFLOP/s. Both parts write one JSON file.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from jnas import bench, xla_options
from jnas.supernet import ops


def _stand_ins():
    def no_conv(x, w, stride=1, padding=0):
        del padding
        return x[:, ::stride, ::stride, :1] * jnp.sum(w) * jnp.ones((w.shape[-1],), x.dtype)

    def no_filter_grad(x, g, kh, kw, stride, padding):
        del stride, padding
        return jnp.zeros((kh, kw, x.shape[-1], g.shape[-1]), x.dtype)

    def affine_only(x, scale=None, bias=None):
        return x if scale is None else x * scale + bias

    return {
        "full_step": {},
        "no_conv_arithmetic": {"conv2d": no_conv},
        "no_filter_gradients": {"_filter_grad": no_filter_grad},
        "no_avg_pool": {"avg_pool_3x3": lambda x: x},
        "no_batchnorm_statistics": {"batch_norm": affine_only},
    }


def ablate(order: int, reps: int, batch_size: int = 64) -> dict:
    originals = {name: getattr(ops, name) for name in ("conv2d", "_filter_grad", "avg_pool_3x3", "batch_norm")}
    timers = {}
    try:
        for name, patch in _stand_ins().items():
            for attr, fn in originals.items():
                setattr(ops, attr, patch.get(attr, fn))
            timers[name] = bench.StepTimer(order=order, batch_size=batch_size)  # traced (and patched) here
            print(f"  compiled {name} in {timers[name].compile_s:.1f} s", file=sys.stderr, flush=True)
    finally:
        for attr, fn in originals.items():
            setattr(ops, attr, fn)
    times = {name: [] for name in timers}
    for i in range(reps + 1):  # round 0 is a warm-up
        for name, timer in timers.items():
            t = timer.step()
            if i:
                times[name].append(t)
    full = statistics.median(times["full_step"])
    return {
        name: {"median_step_s": statistics.median(ts), "step_times_s": ts, "compile_s": timers[name].compile_s,
               "saves_s": full - statistics.median(ts), "saves_share": (full - statistics.median(ts)) / full}
        for name, ts in times.items()
    }


def _median_time(fn, *args, n: int) -> float:
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def conv_throughput(batch_size: int, n: int) -> list[dict]:
    """GFLOP/s of forward, input-gradient and filter-gradient convolutions at the cell's shapes."""
    rows = []
    opts = xla_options.compiler_options()
    for stage, (size, width) in enumerate(((32, 16), (16, 32), (8, 64))):
        for node, edges in enumerate((3, 2, 1)):
            cout = edges * width
            kx, kw, kg = jax.random.split(jax.random.key(stage * 3 + node), 3)
            x = jax.random.normal(kx, (batch_size, size, size, width))
            w = jax.random.normal(kw, (3, 3, width, cout))
            g = jax.random.normal(kg, (batch_size, size, size, cout))
            flops = 2 * batch_size * size * size * 9 * width * cout
            fns = {
                "forward": (jax.jit(lambda x, w: ops._conv(x, w, 1, 1), compiler_options=opts), (x, w)),
                "input_gradient": (jax.jit(lambda x, w, g: ops._input_grad(x, w, g, 1, 1), compiler_options=opts), (x, w, g)),
                "filter_gradient": (jax.jit(lambda x, g: ops._filter_grad(x, g, 3, 3, 1, 1), compiler_options=opts), (x, g)),
            }
            row = {"stage": stage + 1, "node": node, "shape": [batch_size, size, size, width], "out_channels": cout,
                   "gflop": flops / 1e9}
            for kind, (fn, args) in fns.items():
                t = _median_time(fn, *args, n=n)
                row[kind] = {"ms": 1e3 * t, "gflop_per_s": flops / t / 1e9}
            rows.append(row)
            print("  " + ", ".join(f"{k} {row[k]['gflop_per_s']:.0f}" for k in fns) + f" GFLOP/s  stage {stage + 1} node {node}",
                  file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--order", type=int, default=1, choices=(1, 2))
    p.add_argument("--reps", type=int, default=5, help="timed steps per variant (after one warm-up round)")
    p.add_argument("--conv-reps", type=int, default=20)
    p.add_argument("--out", type=pathlib.Path, default=None)
    args = p.parse_args(argv)
    print("part 1: step ablations", file=sys.stderr)
    ablations = ablate(args.order, args.reps)
    print("part 2: convolution throughput", file=sys.stderr)
    convs = conv_throughput(64, args.conv_reps)
    result = {
        "machine": bench.machine_description(), "jax": jax.__version__, "backend": jax.default_backend(),
        "date": time.strftime("%Y-%m-%d"), "order": args.order,
        "command": "python experiments/bench_step/ablate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "ablations": ablations, "convolutions": convs,
    }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    for name, r in ablations.items():
        print(f"{name:26s} {r['median_step_s']:.3f} s/step  saves {r['saves_s']:+.3f} s ({100 * r['saves_share']:+.0f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
