"""Zero-cost proxy benchmark: batched vs per-architecture loop, and a proxy-vs-accuracy run.

Usage (from the repository root):

    python experiments/zero_cost/bench_proxies.py --proxy synflow --archs 500 --chunk 125 --loop-archs 10 \
        --out experiments/zero_cost/results_synflow.json

Writes one JSON object: machine, load average before/after, the batched run (seconds,
compile seconds, archs/s excluding the first (compiling) chunk, Spearman/Kendall vs
``c10_test_acc_200``), and the per-architecture jitted loop (the same scorer compiled
for one architecture, called once per architecture) on ``--loop-archs`` of them, with
the ratio of networks evaluated per second (archs/s without ``--prune``) and the largest relative difference between the loop's scores and
the batched ones (``agrees_with_batched``: within 1e-4). A PNG scatter of score vs
accuracy is written beside the JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jnas.bench import machine_description  # noqa: E402
from jnas.benchmarks import nb201 as bench  # noqa: E402
from jnas.cli.common import write_json_atomic  # noqa: E402
from jnas.cli.score import correlations, load_batch  # noqa: E402
from jnas.proxies import batched  # noqa: E402
from jnas.supernet.nb201 import SupernetConfig  # noqa: E402
from plot_scores import spans_decades  # noqa: E402  (this folder: sys.path[0] when run as a script)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proxy", default="synflow")
    p.add_argument("--archs", type=int, default=500, help="first N of the balanced order (15625 = all)")
    p.add_argument("--chunk", type=int, default=125)
    p.add_argument("--loop-archs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dataset", default="gaussian")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prune", action="store_true",
                   help="batched run: score each distinct pruned cell once (score_archs(prune=True)); "
                        "the ratio to the loop is then taken per network evaluated")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    config = SupernetConfig()
    table = bench.load_table(bench.default_path())
    images, labels = load_batch(args.dataset, args.data_dir, args.batch_size, 32, 3, args.seed)
    codes = batched.balanced_order()[: args.archs]
    load_before = os.getloadavg()
    result = batched.score_archs(codes, [args.proxy], config, images=images, labels=labels, chunk=args.chunk,
                                 seed=args.seed, progress=True, prune=args.prune)
    # steady state: every call but the first (compiling) one; per network evaluated, and
    # per architecture scored (more than one per network when pruning merged some)
    networks_steady = (result.networks - result.chunk) / max(result.seconds - result.compile_seconds, 1e-9)
    steady = networks_steady * len(codes) / result.networks
    figures = correlations(result, [args.proxy], table)[args.proxy]

    loop_codes = codes[: args.loop_archs]
    loop_figures = None
    if len(loop_codes):  # --loop-archs 0: no loop (its one-architecture compile is skipped too)
        first = batched.score_archs(loop_codes[:1], [args.proxy], config, images=images, labels=labels, chunk=1,
                                    seed=args.seed, prune=False)
        t0 = time.perf_counter()
        loop = batched.score_archs(loop_codes, [args.proxy], config, images=images, labels=labels, chunk=1,
                                   seed=args.seed, prune=False)
        loop_seconds = time.perf_counter() - t0
        alone, together = loop.scores[args.proxy][:, 0], result.scores[args.proxy][: len(loop_codes), 0]
        finite = np.isfinite(alone) & np.isfinite(together)  # jacob_cov is NaN where no path reaches the input
        loop_figures = {
            "n_archs": len(loop_codes), "seconds": loop_seconds, "archs_per_s": len(loop_codes) / loop_seconds,
            "compile_seconds": first.compile_seconds,
            "agrees_with_batched": bool(np.allclose(alone, together, rtol=1e-4, atol=1e-4, equal_nan=True)),
            "max_relative_difference": float(np.max(np.abs(alone[finite] - together[finite])
                                                    / np.maximum(np.abs(alone[finite]), 1e-12), initial=0.0)),
            "finite_scores": int(finite.sum()), "nan_mismatches": int(np.sum(np.isnan(alone) != np.isnan(together))),
        }

    payload = {
        "machine": machine_description(), "load_before": load_before, "load_after": os.getloadavg(),
        "proxy": args.proxy, "dataset": args.dataset, "batch_size": args.batch_size, "n_archs": len(codes),
        "chunk": result.chunk, "capacity": result.capacity, "seconds": result.seconds,
        "compile_seconds": result.compile_seconds, "archs_per_s_steady": steady, "pruned": result.pruned,
        "networks": result.networks, "networks_per_s_steady": networks_steady, **figures,
        "loop": loop_figures,
        "batched_over_loop": None if loop_figures is None else networks_steady / loop_figures["archs_per_s"],
        "command": "python experiments/zero_cost/bench_proxies.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
    }
    write_json_atomic(args.out, payload)
    print(payload)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    x = result.scores[args.proxy][:, 0]
    ax.scatter(x, table["c10_test_acc_200"][codes], s=3, alpha=0.5)
    wide = spans_decades(x)
    if wide:
        ax.set_xscale("log")
    ax.set_xlabel(args.proxy + (" (log)" if args.proxy == "synflow" else " (log axis)" if wide else ""))
    ax.set_ylabel("NB201 CIFAR-10 test accuracy (200 epochs)")
    ax.set_title(f"{args.proxy}: Spearman {figures['spearman']:.3f} (n={len(codes)})")
    fig.tight_layout()
    fig.savefig(Path(args.out).with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
