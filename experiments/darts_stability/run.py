"""DARTS stability on NAS-Bench-201: does DARTS collapse to parameter-free ops, and do
PC-DARTS and β-DARTS avoid it?

Runs DARTS (first order), PC-DARTS and β-DARTS with the same seeds and records, every
epoch, the softmax weights of every op on every edge, the weight of the
parameter-free ops, the skip count of the derived cell, the dominant eigenvalue of
∇²_α L_val (RobustDARTS's indicator) and the derived cell's NAS-Bench-201 CIFAR-10
test accuracy. Then plots and a summary beside this file.

Commands:
  python experiments/darts_stability/run.py                      # CPU scale (below), ~1.5 h on 2 cores
  python experiments/darts_stability/run.py --config published   # C=16, N=5, 50 epochs, CIFAR-10: a GPU job
  python experiments/darts_stability/run.py --plots-only         # redraw from the saved JSON

Each run is written to ``results/<config>/<method>-seed<k>.json`` as soon as it ends
and finished runs are skipped on a re-run, so the experiment can be stopped and
continued. The CPU scale is far below the published one (see README.md here for
what it does and does not show).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
METHODS = ("darts", "pcdarts", "beta-darts")
LABELS = {"darts": "DARTS (1st order)", "pcdarts": "PC-DARTS", "beta-darts": "β-DARTS"}
COLORS = {"darts": "tab:red", "pcdarts": "tab:blue", "beta-darts": "tab:green"}
# Published NAS-Bench-201 CIFAR-10 test accuracies (β-DARTS paper, Table 1).
PUBLISHED = {"darts": (54.30, 0.00), "pcdarts": (93.41, 0.30), "beta-darts": (94.36, 0.00)}

CONFIGS = {
    # What fits a 2-core CPU in about 1.5 hours: 9 runs of 600 steps on Fashion-MNIST
    # (Debian's dataset-fashion-mnist), a 3-cell supernet.
    "cpu": dict(dataset="fashion_mnist", data_dir="/usr/share/datasets/fashion-mnist", limit=6400,
                channels=8, cells=1, batch_size=64, epochs=12,
                hessian_every=1, hessian_batches=1, hessian_iters=8, seeds=(0, 1, 2)),
    # The published scale (NAS-Bench-201's DARTS runs): CIFAR-10 through tfds, or
    # --data-dir with the CIFAR-10 binary batches.
    "published": dict(dataset="cifar10", data_dir=None, limit=None,
                      channels=16, cells=5, batch_size=64, epochs=50,
                      hessian_every=1, hessian_batches=4, hessian_iters=20, seeds=(0, 1, 2)),
}


def run_all(name: str, cfg: dict, data_dir: str | None, methods, seeds) -> None:
    from jnas import data as jdata
    from jnas.benchmarks import nb201 as bench
    from jnas.search.runner import SearchConfig, run_search

    out = HERE / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    table = bench.load_table(bench.default_path())
    data_dir = data_dir or cfg["data_dir"]
    dataset = jdata.load_dataset(cfg["dataset"], split="train", data_dir=data_dir, limit=cfg["limit"])
    for seed in seeds:
        for method in methods:
            path = out / f"{method}-seed{seed}.json"
            if path.exists():
                print(f"{path.name}: done, skipped", file=sys.stderr)
                continue
            config = SearchConfig(
                method=method, dataset=cfg["dataset"], data_dir=data_dir, limit=cfg["limit"],
                channels=cfg["channels"], cells=cfg["cells"], batch_size=cfg["batch_size"],
                epochs=cfg["epochs"], seed=seed, hessian_every=cfg["hessian_every"],
                hessian_batches=cfg["hessian_batches"], hessian_iters=cfg["hessian_iters"],
            )
            start = time.perf_counter()
            result = run_search(config, table=table, dataset=dataset)
            result["experiment"] = {"config": name, "wall_seconds": time.perf_counter() - start}
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result))
            tmp.replace(path)
            last = result["history"][-1]
            print(f"{method} seed {seed}: {result['genotype']} test {last['nb201']['c10_test_acc_200']:.2f} "
                  f"skips {last['skip_count']} eig {last.get('hessian_eigenvalue', float('nan')):.4f} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)


def load_runs(name: str) -> dict[str, list[dict]]:
    runs = {m: [] for m in METHODS}
    for path in sorted((HERE / "results" / name).glob("*-seed*.json")):
        method = path.name.split("-seed")[0]
        if method in runs:
            runs[method].append(json.loads(path.read_text()))
    return runs


def curve(run: dict, key) -> np.ndarray:
    return np.asarray([key(record) for record in run["history"]], float)


def summarize(name: str, runs: dict[str, list[dict]]) -> dict:
    summary = {"config": name, "settings": CONFIGS[name], "methods": {}}
    for method, method_runs in runs.items():
        if not method_runs:
            continue
        final = [r["history"][-1] for r in method_runs]
        acc = np.asarray([f["nb201"]["c10_test_acc_200"] for f in final])
        best_epoch_acc = [max(rec["nb201"]["c10_test_acc_200"] for rec in r["history"]) for r in method_runs]
        eig = [curve(r, lambda rec: rec.get("hessian_eigenvalue", np.nan)) for r in method_runs]
        summary["methods"][method] = {
            "seeds": [r["config"]["seed"] for r in method_runs],
            "genotypes": [r["genotype"] for r in method_runs],
            "final_test_acc": acc.tolist(),
            "final_test_acc_mean": float(acc.mean()),
            "final_test_acc_std": float(acc.std()),
            "best_epoch_test_acc": best_epoch_acc,
            "final_skip_count": [f["skip_count"] for f in final],
            "final_param_free_weight_mean": float(np.mean([np.mean(f["param_free_weight"]) for f in final])),
            "first_param_free_weight_mean": float(np.mean([np.mean(r["history"][0]["param_free_weight"]) for r in method_runs])),
            "hessian_eigenvalue_first": float(np.mean([e[0] for e in eig])),
            "hessian_eigenvalue_last": float(np.mean([e[-1] for e in eig])),
            "hessian_eigenvalue_max": float(np.mean([np.nanmax(e) for e in eig])),
            "final_val_acc": [f["val_acc"] for f in final],
            "wall_seconds": [r["experiment"]["wall_seconds"] for r in method_runs],
            "published_c10_test": PUBLISHED[method],
        }
    return summary


def plot(name: str, runs: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jnas.spaces import nb201 as space

    out = HERE / "results" / name
    present = [m for m in METHODS if runs[m]]

    # α softmax trajectories: one row per method (seed 0 or the first seed), one panel per edge
    fig, axes = plt.subplots(len(present), 6, figsize=(20, 3.2 * len(present)), squeeze=False, sharey=True)
    for row, method in enumerate(present):
        run = runs[method][0]
        weights = np.asarray([rec["arch_weights"] for rec in run["history"]])  # (epochs, 6, 5)
        epochs = np.arange(1, len(weights) + 1)
        for e, (src, dst) in enumerate(space.EDGES):
            ax = axes[row, e]
            for k, op in enumerate(space.OPS):
                ax.plot(epochs, weights[:, e, k], label=op)
            ax.set_title(f"{LABELS[method]} seed {run['config']['seed']}: edge {src}→{dst}", fontsize=8)
            ax.set_xlabel("epoch")
        axes[row, 0].set_ylabel("softmax(α)")
    axes[0, -1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "alpha_trajectories.png", dpi=90)
    plt.close(fig)

    panels = [
        ("hessian_eigenvalue.png", "dominant eigenvalue of ∇²_α L_val", lambda rec: rec.get("hessian_eigenvalue", np.nan)),
        ("nb201_test_acc.png", "derived cell: NAS-Bench-201 CIFAR-10 test acc (%)", lambda rec: rec["nb201"]["c10_test_acc_200"]),
        ("param_free_weight.png", "mean weight of parameter-free ops per edge", lambda rec: np.mean(rec["param_free_weight"])),
        ("skip_count.png", "skip_connect edges in the derived cell", lambda rec: rec["skip_count"]),
    ]
    for filename, ylabel, key in panels:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for method in present:
            curves = np.stack([curve(r, key) for r in runs[method]])
            epochs = np.arange(1, curves.shape[1] + 1)
            mean, std = curves.mean(0), curves.std(0)
            ax.plot(epochs, mean, color=COLORS[method], label=f"{LABELS[method]} ({len(curves)} seeds)")
            ax.fill_between(epochs, mean - std, mean + std, color=COLORS[method], alpha=0.15)
        if filename == "nb201_test_acc.png":
            ax.axhline(54.30, color="gray", ls=":", lw=1)
            ax.text(1, 55.5, "all-skip cell: 54.30", color="gray", fontsize=8)
        ax.set_xlabel("search epoch")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.set_title(f"NAS-Bench-201 space, {name} scale", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / filename, dpi=100)
        plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--data-dir", default=None, help="override the config's data directory")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default=None, help="comma-separated (default: the config's)")
    parser.add_argument("--plots-only", action="store_true")
    args = parser.parse_args(argv)
    cfg = CONFIGS[args.config]
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods: {', '.join(sorted(unknown))}")
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else cfg["seeds"]
    if not args.plots_only:
        run_all(args.config, cfg, args.data_dir, methods, seeds)
    runs = load_runs(args.config)
    summary = summarize(args.config, runs)
    (HERE / "results" / args.config / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(args.config, runs)
    print(json.dumps({m: {k: s[k] for k in ("final_test_acc_mean", "final_test_acc_std", "final_skip_count",
                                             "hessian_eigenvalue_first", "hessian_eigenvalue_last")}
                      for m, s in summary["methods"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
