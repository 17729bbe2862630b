"""jnas vs the PyTorch reference (xautodl DARTS-V1): one DARTS step, same shapes, same run.

Each measurement runs in its own process (so peak RSS is that configuration's own),
alternating jnas and PyTorch so that both see the same machine load. Also times the
vmapped multi-architecture path: the forward of P different discrete cells on one
batch with shared weights, against a loop over the cells.

Command (about 10 minutes on a quiet 2-core CPU; needs a Python with torch 2.13 and
xautodl for the reference, see pytorch_reference.py):

    python experiments/bench_step/compare.py --torch-python /path/to/torchvenv/bin/python

Order 2 is DARTS's finite-difference Hessian-vector product on both sides (the
reference's algorithm); jnas's exact one (``--hvp exact``) is timed too, as
``jnas_exact_hvp``.

Writes experiments/results/bench_step.json. Without --torch-python (or if that Python
lacks torch) only the jnas rows are measured, and the ratio is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "bench_step.json"


def run_json(cmd: list[str], timeout: int = 3000) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def jnas_step(order: int, args, hvp: str = "finite_difference", scan: bool = False) -> dict:
    cmd = [sys.executable, "-m", "jnas.cli", "bench", "step", "--order", str(order), "--hvp", hvp,
           "--batch-size", str(args.batch_size), "--channels", str(args.channels), "--cells", str(args.cells),
           "--steps", str(args.steps), "--json"] + (["--scan"] if scan else [])
    return run_json(cmd) | {"command": "jnas bench step " + " ".join(cmd[5:])}


def torch_step(order: int, args) -> dict:
    cmd = [args.torch_python, str(HERE / "pytorch_reference.py"), "--order", str(order),
           "--batch-size", str(args.batch_size), "--channels", str(args.channels), "--cells", str(args.cells),
           "--image-size", "32", "--in-channels", "3", "--num-classes", "10",
           "--steps", str(args.steps), "--warmup", "1", "--threads", str(args.threads), "--json"]
    return run_json(cmd) | {"command": " ".join(["python"] + cmd[1:])}


def vmapped_forward(num_archs: int, batch_size: int, channels: int, cells: int) -> dict:
    """Forward of ``num_archs`` discrete cells on one batch: vmap vs a Python loop."""
    import jax

    from jnas.spaces import nb201 as space
    from jnas.supernet import nb201 as supernet

    config = supernet.SupernetConfig(channels=channels, cells=cells)
    key = jax.random.key(0)
    params = supernet.init(key, config)
    images = jax.random.normal(key, (batch_size, 32, 32, 3))
    weights = space.one_hot(space.sample(jax.random.fold_in(key, 1), (num_archs,)))

    # params and images are arguments, not closed-over constants (XLA would fold them)
    single = jax.jit(lambda p, x, w: supernet.apply(p, x, w, config))
    batched = jax.jit(jax.vmap(lambda p, x, w: supernet.apply(p, x, w, config), in_axes=(None, None, 0)))

    def timed(fn, reps=3):
        fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    rows = [weights[i] for i in range(num_archs)]
    t_vmap = timed(lambda: jax.block_until_ready(batched(params, images, weights)))
    t_loop = timed(lambda: jax.block_until_ready([single(params, images, w) for w in rows]), reps=1)
    work = num_archs * batch_size
    return {
        "num_archs": num_archs,
        "batch_size": batch_size,
        "vmap_s": t_vmap,
        "loop_s": t_loop,
        "vmap_arch_images_per_s": work / t_vmap,
        "loop_arch_images_per_s": work / t_loop,
        "vmap_over_loop": t_loop / t_vmap,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", default=os.environ.get("JNAS_TORCH_PYTHON"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--cells", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--orders", default="1,2")
    parser.add_argument("--vmap-archs", type=int, default=64)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--vmap-only", action="store_true",
                        help="re-measure only the vmapped forward and update it in --out")
    args = parser.parse_args()

    if args.vmap_only:
        record = json.loads(Path(args.out).read_text())
        record["vmapped_forward"] = vmapped_forward(args.vmap_archs, args.batch_size, args.channels, args.cells)
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
        print(json.dumps(record["vmapped_forward"]))
        return 0

    have_torch = bool(args.torch_python) and subprocess.run(
        [args.torch_python, "-c", "import torch, xautodl"], capture_output=True).returncode == 0
    rows = []
    for order in (int(o) for o in args.orders.split(",")):
        row = {"order": order, "jnas": jnas_step(order, args)}
        print(json.dumps({"order": order, "jnas_median_step_s": row["jnas"]["median_step_s"]}), flush=True)
        if have_torch:
            row["pytorch"] = torch_step(order, args)
            row["ratio_median"] = row["pytorch"]["median_step_s"] / row["jnas"]["median_step_s"]
            row["ratio_min"] = row["pytorch"]["min_step_s"] / row["jnas"]["min_step_s"]
            print(json.dumps({"order": order, "pytorch_median_step_s": row["pytorch"]["median_step_s"],
                              "ratio": row["ratio_median"]}), flush=True)
        # each stage's cells under lax.scan: a fraction of the compile time, a slower step
        row["jnas_scan"] = jnas_step(order, args, scan=True)
        if order == 2:  # jnas's exact Hessian-vector product, for reference (not what the reference computes)
            row["jnas_exact_hvp"] = jnas_step(order, args, hvp="exact")
        rows.append(row)

    import jax

    from jnas.bench import machine_description

    record = {
        "machine": {"description": machine_description(), "platform": platform.platform(),
                    "backend": jax.default_backend()},
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "shape": {"batch_size": args.batch_size, "channels": args.channels, "cells": args.cells, "image": [32, 32, 3]},
        "steps": rows,
        "vmapped_forward": vmapped_forward(args.vmap_archs, args.batch_size, args.channels, args.cells),
        "command": "python experiments/bench_step/compare.py --torch-python PYTHON_WITH_TORCH",
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record["vmapped_forward"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
