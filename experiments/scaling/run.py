"""Data-parallel DARTS step: time, throughput and communication for 1, 2, 4, 8 devices.

Each device count runs in its own process. On CPU the devices are simulated with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``; they all share the host's
cores, so this measures the cost of the partitioned program and its collectives, not
a speedup (see README.md). On a GPU/TPU host, ``--real`` uses the real devices
instead (up to ``jax.device_count()``).

Per device count it records: compile time; median / min wall time of one search step
(first-order DARTS on the NAS-Bench-201 supernet, C=8, N=1, 32x32x3, 10 classes,
global batch 64 for the train and for the validation half); images/s (train + val
images per step / median step time); the all-reduce ops in the compiled HLO and the
bytes they carry; the size of the weight + α gradients that a data-parallel step must
all-reduce; and the load average before and after.

    python experiments/scaling/run.py                  # ~5-10 min on 2 shared CPU cores
    python experiments/scaling/run.py --devices 1 2    # a subset
    python experiments/scaling/run.py --real --devices 1 2 4 8   # on a multi-GPU node

Writes experiments/scaling/results.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHAPE = {"channels": 8, "cells": 1, "image_size": 32, "in_channels": 3, "num_classes": 10, "batch_size": 64}
DTYPE_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1, "s64": 8}
COLLECTIVES = ("all-reduce", "collective-permute", "all-gather", "reduce-scatter", "all-to-all")
# "%name = SHAPE op(" with SHAPE an array type or a tuple of them (tuples may hold /*index=5*/ comments)
OP = re.compile(r"=\s*(\([^()]*\)|\S+)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
ARRAY = re.compile(r"\b(f32|f16|bf16|f64|s32|u32|s8|u8|pred|s64)\[([0-9,]*)\]")


def collective_stats(hlo_text: str) -> dict:
    """Counts the collectives of a compiled HLO module and sums the bytes of their results.

    For an all-reduce the result is the reduced operand, so the bytes are the payload
    each device contributes (a ring all-reduce moves about twice that per device).
    """
    stats = {name: {"ops": 0, "bytes": 0} for name in COLLECTIVES}
    for match in OP.finditer(hlo_text):
        entry = stats[match.group(2)]
        entry["ops"] += 1
        for dtype, dims in ARRAY.findall(match.group(1)):
            size = 1
            for d in filter(None, dims.split(",")):
                size *= int(d)
            entry["bytes"] += size * DTYPE_BYTES[dtype]
    return {name: entry for name, entry in stats.items() if entry["ops"]}


def measure(devices: int, steps: int, warmup: int) -> dict:
    """One device count, in this process (its XLA_FLAGS already set by the parent)."""
    import jax
    import numpy as np

    from jnas import parallel
    from jnas.search import darts
    from jnas.supernet import nb201

    config = nb201.SupernetConfig(**{k: v for k, v in SHAPE.items() if k != "batch_size"})
    network = nb201.search_network(config)
    search = darts.make_darts(network, darts.DartsConfig(), total_steps=1000)
    mesh = parallel.make_mesh(devices)
    state = parallel.replicate(search.init(jax.random.key(0)), mesh)
    rng = np.random.default_rng(0)
    b, s = SHAPE["batch_size"], SHAPE["image_size"]

    def batch():
        images = rng.normal(size=(b, s, s, SHAPE["in_channels"])).astype(np.float32)
        labels = rng.integers(0, SHAPE["num_classes"], b).astype(np.int32)
        return parallel.shard_batch(darts.Batch(images, labels), mesh)

    step = parallel.data_parallel_step(search.step, mesh, donate_state=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    train, val = batch(), batch()
    compiled = step.lower(state, train, val).compile()
    compile_s = time.perf_counter() - t0
    comm = collective_stats(compiled.as_text())

    times = []
    for i in range(warmup + steps):
        train, val = batch(), batch()
        jax.block_until_ready((train, val))
        t = time.perf_counter()
        state, metrics = compiled(state, train, val)
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            times.append(time.perf_counter() - t)
    grad_bytes = {
        "weights": int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.params))),
        "arch": int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.arch_params))),
    }
    median = statistics.median(times)
    return {
        "devices": devices,
        "per_device_batch": b // devices,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "compile_s": compile_s,
        "median_step_s": median,
        "min_step_s": min(times),
        "step_times_s": times,
        "images_per_s": 2 * b / median,
        "gradient_bytes": grad_bytes,
        "gradient_bytes_total": grad_bytes["weights"] + grad_bytes["arch"],
        "all_reduce_ops": comm.get("all-reduce", {}).get("ops", 0),
        "all_reduce_bytes": comm.get("all-reduce", {}).get("bytes", 0),
        "collectives": comm,
        "loss_finite": bool(np.isfinite(float(metrics["train_loss"]))),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--real", action="store_true", help="use the real accelerators, no simulated CPU devices")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        print(json.dumps(measure(args.child, args.steps, args.warmup)))
        return 0

    import jax

    from jnas.bench import machine_description

    runs = []
    for n in args.devices:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if not args.real:
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
            env["JAX_PLATFORMS"] = "cpu"
        cmd = [sys.executable, __file__, "--child", str(n), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        print(f"{n} device(s) ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  step {result['median_step_s']:.3f} s, {result['images_per_s']:.0f} img/s, "
              f"{result['all_reduce_ops']} all-reduces, {result['all_reduce_bytes']} B, "
              f"load {result['loadavg_before'][0]:.1f}", file=sys.stderr, flush=True)
        runs.append(result)

    report = {
        "what": "first-order DARTS step, data-parallel over a 1-D mesh (jnas.parallel.data_parallel_step)",
        "simulated_cpu_devices": not args.real,
        "shape": SHAPE,
        "steps": args.steps,
        "warmup": args.warmup,
        "machine": machine_description(),
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "xla_flags_parent": os.environ.get("XLA_FLAGS"),
        "loadavg_at_end": os.getloadavg(),
        "command": " ".join(["python", "experiments/scaling/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "runs": runs,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
