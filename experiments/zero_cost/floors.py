"""Arithmetic of the zero-cost proxies against the issue's CPU figures.

    python experiments/zero_cost/floors.py --out experiments/zero_cost/results_floors_cpu.json

For every committed CPU measurement (``results_*_cpu.json`` in this folder) this
counts the convolution/linear arithmetic the scorer had to do, from the closed-form
multiply-accumulate count of each discrete network (``jnas.proxies.counts.flops``,
only chosen ops; with pruning the distinct pruned networks), times the batch, times
the proxy's passes in forward-pass units:

* 1: ``nwot`` (forward only);
* 2: ``synflow`` (one ``jax.jvp``: primal and tangent), ``jacob_cov`` (forward, input
  gradient), ``fisher`` (forward, activation gradients);
* 3: ``snip``, ``grad_norm`` (forward, input and filter gradients);
* 6: ``grasp`` (forward-over-reverse of the full gradient: 3 primal + 3 tangent).

It then gives the sustained rate (GFLOP/s of useful arithmetic) the measurement
achieved, the rate the issue's two CPU figures would need (the whole space in 15
minutes, compile included; 10x the per-architecture loop's architectures per second),
and both as a share of the fastest convolution measured on this machine
(``experiments/results/step_ablation.json``). Useful arithmetic only: padding slots,
BatchNorm, pooling and gathers are not counted, so the required rates are lower bounds.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax.numpy as jnp
import numpy as np

from jnas.proxies import batched, counts
from jnas.spaces import nb201 as space
from jnas.supernet.nb201 import SupernetConfig

HERE = pathlib.Path(__file__).resolve().parent
PASSES = {"nwot": 1, "synflow": 2, "jacob_cov": 2, "fisher": 2, "snip": 3, "grad_norm": 3, "grasp": 6}
SPACE_SECONDS = 15 * 60
WHOLE_SPACE = ("results_synflow_bench_cpu.json", "results_synflow_pruned_bench_cpu.json", "results_nwot_all_cpu.json",
               "results_jacob_cov_all_pruned_cpu.json", "results_fisher_all_pruned_cpu.json",
               "results_snip_all_pruned_cpu.json", "results_grad_norm_all_pruned_cpu.json")
SAMPLES = ("results_nwot_bench_cpu.json", "results_jacob_cov_bench_cpu.json", "results_fisher_bench_cpu.json",
           "results_snip_bench_cpu.json", "results_grad_norm_bench_cpu.json", "results_grasp_bench_cpu.json")


def macs(codes) -> np.ndarray:
    """Millions of multiply-accumulates of one image through each cell of ``codes``."""
    enc = space.code_to_encoding(jnp.asarray(np.asarray(codes)))
    return np.asarray(counts.flops(None, None, enc, None, config=SupernetConfig()), np.float64)


def proxy_of(result: dict) -> str:
    return result.get("proxy") or next(iter(result["proxies"]))


def gflop(proxy: str, codes, batch_size: int, pruned: bool) -> float:
    """Useful GFLOP of scoring ``codes`` (each distinct pruned cell once when ``pruned``)."""
    if pruned:
        codes = np.unique(batched.pruned_codes(np.asarray(codes)))
    images = 1 if proxy == "synflow" else batch_size
    return float(np.sum(macs(codes))) * 2e6 * images * PASSES[proxy] / 1e9


def whole_space_row(name: str, result: dict, peak: float) -> dict:
    proxy = proxy_of(result)
    pruned = bool(result.get("pruned", False))
    work = gflop(proxy, np.arange(space.NUM_ARCHS), result["batch_size"], pruned)
    compile_s = result.get("compile_seconds", 0.0)
    scoring_s = result["seconds"] - compile_s
    need = work / (SPACE_SECONDS - compile_s)
    return {"file": name, "proxy": proxy, "pruned": pruned, "batch_size": result["batch_size"],
            "gflop": work, "seconds": result["seconds"], "compile_s": compile_s,
            "achieved_gflop_per_s": work / scoring_s,
            "needed_for_15_min_gflop_per_s": need, "needed_share_of_best_conv": need / peak,
            "floor_at_best_conv_s": compile_s + work / peak}


def sample_row(name: str, result: dict, peak: float) -> dict:
    proxy = proxy_of(result)
    codes = batched.balanced_order()[: result["n_archs"]]
    per_cell = gflop(proxy, codes, result["batch_size"], False) / len(codes)
    loop = result["loop"]
    loop_cells = batched.balanced_order()[: loop["n_archs"]]
    loop_per_cell = gflop(proxy, loop_cells, result["batch_size"], False) / len(loop_cells)
    batched_rate = result["archs_per_s_steady"] * per_cell
    need = 10 * loop["archs_per_s"] * per_cell
    prune = batched.prunable([proxy])
    space_work = gflop(proxy, np.arange(space.NUM_ARCHS), result["batch_size"], prune)
    space_need = space_work / (SPACE_SECONDS - result["compile_seconds"])
    return {"file": name, "proxy": proxy, "batch_size": result["batch_size"], "cells": len(codes),
            "gflop_per_cell": per_cell, "batched_cells_per_s": result["archs_per_s_steady"],
            "achieved_gflop_per_s": batched_rate, "loop_cells_per_s": loop["archs_per_s"],
            "loop_gflop_per_s": loop["archs_per_s"] * loop_per_cell,
            "batched_over_loop": result["batched_over_loop"],
            "needed_for_10x_gflop_per_s": need, "needed_share_of_best_conv": need / peak,
            "whole_space": {"pruned": prune, "gflop": space_work, "compile_s": result["compile_seconds"],
                            "needed_for_15_min_gflop_per_s": space_need, "needed_share_of_best_conv": space_need / peak}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=pathlib.Path, default=None)
    p.add_argument("--ablation", type=pathlib.Path, default=HERE.parent / "results" / "step_ablation.json",
                   help="where the machine's convolution throughput was measured")
    args = p.parse_args(argv)
    convs = json.loads(args.ablation.read_text())["convolutions"]
    peak = max(max(r[k]["gflop_per_s"] for k in ("forward", "input_gradient", "filter_gradient")) for r in convs)
    space_rows = [whole_space_row(n, json.loads((HERE / n).read_text()), peak) for n in WHOLE_SPACE]
    sample_rows = [sample_row(n, json.loads((HERE / n).read_text()), peak) for n in SAMPLES]
    synflow = json.loads((HERE / "results_synflow_bench_cpu.json").read_text())
    sample_rows.insert(0, sample_row("results_synflow_bench_cpu.json", synflow, peak))
    mean_macs = float(np.mean(macs(np.arange(space.NUM_ARCHS))))
    pruned_macs = float(np.mean(macs(np.unique(batched.pruned_codes(np.arange(space.NUM_ARCHS))))))
    out = {
        "best_conv_gflop_per_s": peak, "best_conv_source": str(args.ablation.relative_to(HERE.parent.parent)),
        "mean_mmacs_per_image": mean_macs, "mean_mmacs_per_image_pruned_distinct": pruned_macs,
        "passes": PASSES, "whole_space": space_rows, "batched_vs_loop": sample_rows,
        "command": "python experiments/zero_cost/floors.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"best convolution measured here: {peak:.0f} GFLOP/s; mean forward {mean_macs:.1f} MMAC/image "
          f"({pruned_macs:.1f} over the distinct pruned cells)")
    print("whole space (15 min):")
    for r in space_rows:
        print(f"  {r['proxy']:10s} pruned={r['pruned']!s:5s} {r['gflop'] / 1e3:6.1f} TFLOP  measured {r['seconds']:6.0f} s at "
              f"{r['achieved_gflop_per_s']:5.1f} GFLOP/s; 15 min needs {r['needed_for_15_min_gflop_per_s']:5.1f} "
              f"({100 * r['needed_share_of_best_conv']:.0f} % of the best conv); floor {r['floor_at_best_conv_s']:.0f} s")
    print("batched vs loop (10x):")
    for r in sample_rows:
        print(f"  {r['proxy']:10s} batched {r['achieved_gflop_per_s']:5.1f} GFLOP/s, loop {r['loop_gflop_per_s']:5.1f}: "
              f"{r['batched_over_loop']:.1f}x; 10x needs {r['needed_for_10x_gflop_per_s']:5.1f} GFLOP/s "
              f"({100 * r['needed_share_of_best_conv']:.0f} % of the best conv); whole space "
              f"{r['whole_space']['gflop'] / 1e3:.1f} TFLOP, 15 min needs {r['whole_space']['needed_for_15_min_gflop_per_s']:.0f} "
              f"({100 * r['whole_space']['needed_share_of_best_conv']:.0f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
