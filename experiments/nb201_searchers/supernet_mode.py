"""Discrete searchers in weight-sharing mode: SPOS supernet on Fashion-MNIST, NB201 ground truth.

NOT a reproduction of a published number: the supernet is trained and scored on
**Fashion-MNIST** (28x28x1, the Debian IDX files), while the ground truth,
NAS-Bench-201's ``c10_test_acc_200``, is **CIFAR-10** accuracy after 200 epochs. It
measures the machinery (SPOS training, one vmapped evaluation per population,
vmapped searcher runs) and how well a small, briefly trained supernet on another
data set ranks NB201 cells, at a CPU-sized scale (C=8, N=1 instead of C=16, N=5).

Steps (``jnas/search/oneshot_runner.py``):
  1. SPOS (Guo et al., ECCV 2020): ``--train-steps`` steps, each on one uniformly
     sampled cell, on the weight half of the first ``--limit`` training images;
     weight optimizer as for DARTS' weights (SGD, Nesterov momentum 0.9, cosine
     lr 0.025 -> 0.001, wd 5e-4, clip 5). BatchNorm always uses batch statistics.
  2. Held-out accuracy (first ``--eval-images`` images of the other half, batches of
     64) of 200 distinct random cells; Kendall tau-b against ``c10_test_acc_200``.
  3. For each of REA, REINFORCE, random and local search: ``--runs`` vmapped runs of
     ``--queries`` queries with fitness = held-out supernet accuracy (%); each run's
     best-fitness cell is looked up in the table.

Command (from the repository root)::

    /work/venv/bin/python experiments/nb201_searchers/supernet_mode.py \
        [--table ../shared/data/nb201/nb201_cifar10.csv] [--data-dir /usr/share/datasets/fashion-mnist]

Expected runtime: about 10 minutes on 2 shared CPU cores (579 s measured). Expected result
(seed 0): Kendall tau -0.09; NB201 test acc. of the runs' best cells REA 85.2, REINFORCE 85.7,
random 89.6, local 86.7 (5 runs each). Writes
``supernet_results.json`` and ``supernet_kendall.png`` beside this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import numpy as np  # noqa: E402

from jnas.benchmarks import nb201 as bench  # noqa: E402
from jnas.cli.evolve import _machine  # noqa: E402
from jnas.search import oneshot_runner  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=None)
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--limit", type=int, default=12000)
    parser.add_argument("--eval-images", type=int, default=1024)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--cells", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--kendall-cells", type=int, default=200)
    parser.add_argument("--algos", default="rea,reinforce,random,local")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "supernet_results.json"))
    parser.add_argument("--plot", default=str(HERE / "supernet_kendall.png"))
    args = parser.parse_args(argv)

    start = time.perf_counter()
    table = bench.load_table(args.table or bench.default_path())
    algos = args.algos.split(",")
    common = dict(
        dataset="fashion_mnist", data_dir=args.data_dir, limit=args.limit, eval_images=args.eval_images,
        channels=args.channels, cells=args.cells, batch_size=args.batch_size, train_steps=args.train_steps,
        queries=args.queries, runs=args.runs, seed=args.seed, kendall_cells=args.kendall_cells,
    )
    config = oneshot_runner.OneShotConfig(algo=algos[0], **common)
    trained = oneshot_runner.train_supernet(config, progress=True)
    print(f"trained: {trained.seconds:.0f} s, last {trained.history[-1]}", flush=True)

    results = {}
    for algo in algos:
        config = dataclasses.replace(config, algo=algo)
        # the 200 cells are scored once; every searcher reuses that measurement
        kendall = results[algos[0]]["kendall"] if results else None
        result = oneshot_runner.run_oneshot(config, table, trained=trained, kendall=kendall, progress=True)
        results[algo] = result
        print(f"{algo:10s} test {result['test_mean']:.2f} +- {result['test_std']:.2f}  tau {result['kendall']['tau_b']:.3f}"
              f"  ({result['seconds']['search']:.0f} s search)", flush=True)

    first = results[algos[0]]
    kendall = first["kendall"]
    random_cells = np.asarray(kendall["c10_test_acc_200"])
    payload = {
        "note": "supernet trained and scored on Fashion-MNIST (28x28x1), ground truth NB201 CIFAR-10 "
        "c10_test_acc_200: not a reproduction of a published figure",
        "command": "/work/venv/bin/python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:]),
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "algo"},
        "dataset": first["dataset"],
        "supernet": first["supernet"],
        "history": first["history"],
        "kendall": kendall,
        "random_cells_table_mean": round(float(random_cells.mean()), 4),
        "table_best": round(float(np.max(table.columns["c10_test_acc_200"])), 4),
        "searchers": {
            algo: {k: r[k] for k in ("test_mean", "test_std", "supernet_acc_mean", "per_run", "seconds")}
            for algo, r in results.items()
        },
        "seconds_total": round(time.perf_counter() - start, 1),
        "machine": _machine(),
        "jax_version": first["jax_version"],
    }
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.scatter(kendall["supernet_acc"], kendall["c10_test_acc_200"], s=10, alpha=0.6, label="random cells")
    colours = dict(zip(algos, ["C1", "C2", "C3", "C4"]))
    for algo, r in results.items():
        ax.scatter([p["supernet_acc"] for p in r["per_run"]], [p["c10_test_acc_200"] for p in r["per_run"]],
                   marker="x", s=40, color=colours[algo], label=f"{algo}: best per run")
    ax.set_xlabel("supernet held-out accuracy (%), Fashion-MNIST")
    ax.set_ylabel("NB201 CIFAR-10 test accuracy (%), 200 epochs")
    ax.set_title(f"SPOS supernet (C={config.channels}, N={config.cells}, {config.train_steps} steps): "
                 f"Kendall tau {kendall['tau_b']:.2f}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"wrote {args.out} and {args.plot} ({payload['seconds_total']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
