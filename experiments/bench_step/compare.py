"""jnas vs the PyTorch reference (xautodl DARTS-V1): one DARTS step, same shapes, same run.

Each implementation runs in its own process (so peak RSS is its own). Both are
compiled / warmed up first and then stepped *alternately*, one step at a time
(jnas, PyTorch, PyTorch, jnas, ...), so that both see the same machine load: this
machine's speed drifts by up to 2x within minutes, and timing one implementation
after the other moved the ratio from 1.8x to 2.7x for the same code. The ratio is
the PyTorch median over the jnas median of the interleaved steps; the JSON also keeps
every pair. Also times the vmapped multi-architecture path: the forward of P
different discrete cells on one batch with shared weights, against a loop over the cells.

Command (about 15 minutes on a quiet 2-core CPU; needs a Python with torch 2.13 and
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


def cold_compile_env() -> dict:
    """This environment without ``JAX_COMPILATION_CACHE_DIR``: jnas's ``compile_s`` is then always
    a compile, never a load from JAX's persistent cache."""
    return {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}


def run_json(cmd: list[str], timeout: int = 3000) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cold_compile_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def jnas_step(order: int, args, hvp: str = "finite_difference", scan: bool = False) -> dict:
    cmd = [sys.executable, "-m", "jnas.cli", "bench", "step", "--order", str(order), "--hvp", hvp,
           "--batch-size", str(args.batch_size), "--channels", str(args.channels), "--cells", str(args.cells),
           "--steps", str(args.steps), "--json"] + (["--scan"] if scan else [])
    return run_json(cmd) | {"command": "jnas bench step " + " ".join(cmd[5:])}


def reference_env() -> dict:
    """The reference's environment: glibc's malloc set as jnas sets its own (jnas.host_memory).

    jnas keeps its buffers' memory between steps (``mallopt``; PyTorch on CPU already runs
    synchronously, the other half of that setting), so the reference runs with the same
    malloc settings, through ``GLIBC_TUNABLES``. ``JNAS_REUSE_HOST_MEMORY=0`` turns both off.
    """
    from jnas import host_memory

    env = dict(os.environ)
    if host_memory.enabled():
        env["GLIBC_TUNABLES"] = host_memory.GLIBC_TUNABLES
    return env


class _Server:
    """A benchmark process that compiles, warms up, prints ``{"ready": ...}``, then runs one timed
    step per ``step`` line on its stdin (answering ``{"step_s": ...}``) until ``done`` (answering
    its summary JSON)."""

    def __init__(self, cmd: list[str], env: dict | None = None):
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"{' '.join(self.cmd)} exited with {self.proc.wait()} before answering")

    def step(self) -> float:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self._read()["step_s"]

    def finish(self) -> dict:
        self.proc.stdin.write("done\n")
        self.proc.stdin.flush()
        result = self._read()
        self.proc.wait()
        return result


def serve_jnas(args) -> int:
    """The jnas side of :func:`interleaved` (``compare.py --serve-jnas``), set up as ``jnas bench step`` is."""
    from jnas import host_memory
    from jnas.bench import StepTimer

    host_memory.reuse_unless_disabled()

    timer = StepTimer(order=args.serve_order, batch_size=args.batch_size, channels=args.channels, cells=args.cells)
    timer.step()  # warm-up
    print(json.dumps({"ready": True, "compile_s": timer.compile_s}), flush=True)
    times = []
    for line in sys.stdin:
        if line.strip() == "done":
            break
        times.append(timer.step())
        print(json.dumps({"step_s": times[-1]}), flush=True)
    print(json.dumps(timer.report(times)), flush=True)
    return 0


def interleaved(order: int, args) -> dict:
    """jnas and the reference stepped alternately (ABBA order), each in its own process."""
    shape = ["--batch-size", str(args.batch_size), "--channels", str(args.channels), "--cells", str(args.cells)]
    jnas = _Server([sys.executable, str(Path(__file__).resolve()), "--serve-jnas", str(order)] + shape,
                   env=cold_compile_env())
    torch_cmd = [args.torch_python, str(HERE / "pytorch_reference.py"), "--order", str(order)] + shape + [
        "--image-size", "32", "--in-channels", "3", "--num-classes", "10", "--warmup", "1",
        "--threads", str(args.threads), "--json", "--serve"]
    torch_env = reference_env()
    torch = _Server(torch_cmd, env=torch_env)
    pairs = []
    for i in range(args.steps):
        if i % 2 == 0:
            t_jnas = jnas.step()
            t_torch = torch.step()
        else:
            t_torch = torch.step()
            t_jnas = jnas.step()
        pairs.append([t_jnas, t_torch])
    jnas_result = jnas.finish() | {"command": "jnas bench step --order %d (stepped by compare.py)" % order}
    torch_result = torch.finish() | {"command": " ".join(["python"] + torch_cmd[1:]),
                                     "glibc_tunables": torch_env.get("GLIBC_TUNABLES")}
    ratios = [b / a for a, b in pairs]
    return {
        "jnas": jnas_result,
        "pytorch": torch_result,
        "interleaved_pairs_s": pairs,
        "ratio_median": torch_result["median_step_s"] / jnas_result["median_step_s"],
        "ratio_min": torch_result["min_step_s"] / jnas_result["min_step_s"],
        "ratio_of_pairs": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
    }


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
    parser.add_argument("--steps", type=int, default=9, help="timed steps (interleaved pairs with --torch-python)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--orders", default="1,2")
    parser.add_argument("--vmap-archs", type=int, default=64)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--vmap-only", action="store_true",
                        help="re-measure only the vmapped forward and update it in --out")
    parser.add_argument("--serve-jnas", dest="serve_order", type=int, choices=(1, 2), default=None,
                        help=argparse.SUPPRESS)  # internal: the jnas process of an interleaved measurement
    args = parser.parse_args()
    if args.serve_order is not None:
        return serve_jnas(args)

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
        if have_torch:
            row = {"order": order} | interleaved(order, args)
            print(json.dumps({"order": order, "jnas_median_step_s": row["jnas"]["median_step_s"],
                              "pytorch_median_step_s": row["pytorch"]["median_step_s"], "ratio": row["ratio_median"],
                              "compile_s": row["jnas"]["compile_s"]}), flush=True)
        else:
            row = {"order": order, "jnas": jnas_step(order, args)}
            print(json.dumps({"order": order, "jnas_median_step_s": row["jnas"]["median_step_s"]}), flush=True)
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
