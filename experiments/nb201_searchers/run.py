"""Discrete searchers on NAS-Bench-201 CIFAR-10 under the paper's time-budget protocol.

Reproduces the non-weight-sharing baselines of the NAS-Bench-201 paper (Dong & Yang,
ICLR 2020, CIFAR-10 test accuracy, mean +- std over 500 runs): regularized
evolution 93.92 +- 0.30, REINFORCE 93.85 +- 0.37, random search 93.70 +- 0.36; adds
local search, a REINFORCE learning-rate sweep (the published value is ambiguous,
see ``jnas/search/reinforce.py``) and multi-objective evolution (12-epoch validation
accuracy vs parameters; the table has no FLOPs column).

Protocol (``jnas/benchmarks/protocol.py``): each query returns the 12-epoch
validation accuracy and is charged ``cifar10_train_time_200_s * 12 / 200``
simulated seconds; a run stops at the first query that would exceed 12000 s; the
reported figure is the 200-epoch test accuracy of the counted query with the best
reward. Default hyperparameters: REA population 10, tournament 3; REINFORCE Adam
lr 0.001, baseline momentum 0.9.

Command (from the repository root)::

    /work/venv/bin/python experiments/nb201_searchers/run.py \
        [--table ../shared/data/nb201/nb201_cifar10.csv] [--runs 500] [--seed 0]

Expected runtime: about 1.5 minutes on 2 CPU cores, mostly compilation (500 vmapped
REA runs take 0.2-0.4 s once compiled, 6-9 s with compilation).

Expected result (seed 0, 500 runs): REA 93.94 +- 0.39, REINFORCE 93.77 +- 0.31,
random 93.74 +- 0.32 (each within 0.1 of the published mean); local search
94.10 +- 0.30; REINFORCE with lr 0.5 93.14 +- 0.99. Writes ``results.json``,
``trajectories.png`` and ``pareto.png`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jnas.bench import machine_description  # noqa: E402
from jnas.benchmarks import nb201 as nb201_table  # noqa: E402
from jnas.benchmarks import protocol  # noqa: E402
from jnas.search import discrete  # noqa: E402
from jnas.search.evolution import pareto_evolution  # noqa: E402
from jnas.search.reinforce import reinforce  # noqa: E402
from jnas.spaces import nb201  # noqa: E402

HERE = Path(__file__).resolve().parent

# CIFAR-10 test accuracy, mean and std over 500 runs (NAS-Bench-201 paper, Table 5;
# also in shared/data/nb201/README.md).
PUBLISHED = {
    "rea": (93.92, 0.30),
    "reinforce": (93.85, 0.37),
    "random": (93.70, 0.36),
}
LABELS = {
    "rea": "REA (P=10, S=3)",
    "reinforce": "REINFORCE (lr 0.001)",
    "random": "random search",
    "local": "local search",
}
REINFORCE_LEARNING_RATES = (0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
# hypervolume reference point in (params [M], test accuracy [%]): a point counts for
# the area it dominates with fewer params than 1.6 M and more accuracy than 80 %
HV_REFERENCE = (1.6, 80.0)


def _rounded(summary: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}




def pareto_front_2d(params: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both (fewer params, more accuracy), by params."""
    order = np.lexsort((-accuracy, params))  # params ascending, accuracy descending on ties
    front, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return np.asarray(front, dtype=int)


def hypervolume_2d(params: np.ndarray, accuracy: np.ndarray, reference=HV_REFERENCE) -> float:
    """Area dominated by the points inside the reference box (params <= ref, accuracy >= ref)."""
    inside = (params <= reference[0]) & (accuracy >= reference[1])
    params, accuracy = params[inside], accuracy[inside]
    if params.size == 0:
        return 0.0
    front = pareto_front_2d(params, accuracy)
    p, a = params[front], accuracy[front]  # params ascending, accuracy ascending
    right = np.append(p[1:], reference[0])
    return float(np.sum((right - p) * (a - reference[1])))


def timing_rea(benchmark, runs: int, seed: int, budget: float) -> dict:
    """Wall-clock of ``runs`` vmapped REA runs: first call (with compilation) and a second call."""
    searcher = discrete.make("rea")
    run = protocol.batch_simulator(searcher, protocol.max_queries_for(benchmark, budget))
    keys = protocol.run_keys(seed, runs)
    start = time.perf_counter()
    jax.block_until_ready(run(benchmark, keys, budget))
    cold = time.perf_counter() - start
    start = time.perf_counter()
    result = jax.block_until_ready(run(benchmark, keys, budget))
    warm = time.perf_counter() - start
    return {
        "runs": runs,
        "seconds_with_compilation": round(cold, 3),
        "seconds_compiled": round(warm, 3),
        "test_mean": round(float(np.mean(result.best_test)), 4),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", help="NAS-Bench-201 CIFAR-10 CSV (default: nb201.default_path())")
    parser.add_argument("--runs", type=int, default=protocol.NB201_RUNS, help="runs per algorithm (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-seconds", type=float, default=protocol.NB201_BUDGET_SECONDS)
    parser.add_argument("--out", default=str(HERE), help="folder for results.json and the plots")
    args = parser.parse_args(argv)

    path = args.table or nb201_table.default_path()
    if path is None:
        print("run.py: error: no NAS-Bench-201 table; pass --table", file=sys.stderr)
        return 2
    try:
        table = nb201_table.load_table(path)
    except nb201_table.TableError as err:
        print(f"run.py: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    benchmark = protocol.nb201_benchmark(table)
    budget = args.budget_seconds
    started = time.perf_counter()

    results = {
        "protocol": {
            "benchmark": "NAS-Bench-201, CIFAR-10 (cifar10-valid split for search)",
            "reward": "c10_valid_acc_12: 12-epoch validation accuracy (mean over seeds)",
            "cost_per_query_seconds": "cifar10_train_time_200_s * 12 / 200 (12 epochs of the 200-epoch per-epoch time)",
            "budget_seconds": budget,
            "stop": "first query that would exceed the budget ends the run; later queries are ignored",
            "reported": "c10_test_acc_200 and c10_valid_acc_200 of the counted query with the best reward",
            "max_queries": protocol.max_queries_for(benchmark, budget),
            "source": "Dong & Yang, NAS-Bench-201, ICLR 2020; reference code exps/NAS-Bench-201-algos "
            "(R_EA.py, RANDOM.py, reinforce.py) in D-X-Y/AutoDL-Projects",
        },
        "runs": args.runs,
        "seed": args.seed,
        "jax_version": jax.__version__,
        "machine": machine_description(),
        "table": str(table.path),
        "algorithms": {},
    }

    trajectories = {}
    for name in ("rea", "reinforce", "random", "local"):
        many = protocol.run_many(discrete.make(name), benchmark, args.runs, args.seed, budget, progress=True)
        summary = protocol.summarize(many)
        entry = {"label": LABELS[name], **_rounded(summary), "seconds": round(many.seconds, 3)}
        if name in PUBLISHED:
            mean, std = PUBLISHED[name]
            entry["published_test_mean"], entry["published_test_std"] = mean, std
            entry["difference"] = round(summary["test_mean"] - mean, 3)
            entry["within_0.3"] = abs(summary["test_mean"] - mean) <= 0.3
        results["algorithms"][name] = entry
        trajectories[name] = many
        print(f"{name:10s} {summary['test_mean']:.2f} +- {summary['test_std']:.2f}  "
              f"(valid {summary['valid_mean']:.2f}, {summary['queries_mean']:.0f} queries, {many.seconds:.1f} s)",
              flush=True)

    results["rea_timing"] = timing_rea(benchmark, 500, args.seed, budget)
    print(f"timing     500 REA runs: {results['rea_timing']}", flush=True)

    sweep = {}
    for rate in REINFORCE_LEARNING_RATES:
        many = protocol.run_many(reinforce(learning_rate=rate), benchmark, args.runs, args.seed, budget)
        summary = protocol.summarize(many)
        sweep[str(rate)] = _rounded({k: summary[k] for k in ("test_mean", "test_std", "valid_mean", "valid_std")})
        print(f"reinforce lr {rate:<6g} {summary['test_mean']:.2f} +- {summary['test_std']:.2f}", flush=True)
    results["reinforce_learning_rate_sweep"] = {
        "note": "not tuning: the reference repository states both 0.001 (scripts) and 0.5 (docs); "
        "the default stays 0.001, see jnas/search/reinforce.py",
        "results": sweep,
    }

    results["multi_objective"] = multi_objective(table, benchmark, args, out)
    results["total_seconds"] = round(time.perf_counter() - started, 1)

    plot_trajectories(trajectories, out / "trajectories.png", budget)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out / 'results.json'}, {out / 'trajectories.png'}, {out / 'pareto.png'} "
          f"in {results['total_seconds']} s")
    return 0


def multi_objective(table, benchmark, args, out: Path) -> dict:
    """Pareto evolution on (12-epoch validation accuracy, -params); fronts judged on test accuracy."""
    runs = min(args.runs, 100)
    many = protocol.run_many(
        pareto_evolution(num_objectives=2),
        benchmark,
        runs,
        args.seed,
        args.budget_seconds,
        fitness_fn=protocol.reward_params_fitness,
    )
    params_all = np.asarray(table["cifar10_params_mb"])
    test_all = np.asarray(table["c10_test_acc_200"])
    true_front = pareto_front_2d(params_all, test_all)
    true_hv = hypervolume_2d(params_all, test_all)

    codes = []
    ratios = []
    for r in range(runs):
        valid = many.state.archive_valid[r]
        found = np.asarray(nb201.encoding_to_code(many.state.archive[r][valid])).astype(int)
        codes.append(found)
        ratios.append(hypervolume_2d(params_all[found], test_all[found]) / true_hv)
    union = np.unique(np.concatenate(codes))
    union_front = union[pareto_front_2d(params_all[union], test_all[union])]
    on_true = np.isin(union_front, true_front)

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.scatter(params_all, test_all, s=2, c="0.8", label="all 15,625 cells", rasterized=True)
    tp, ta = params_all[true_front], test_all[true_front]
    ax.step(tp, ta, where="post", c="k", lw=1.5, label=f"ground-truth front ({len(true_front)} cells)")
    median_run = int(np.argsort(ratios)[len(ratios) // 2])
    typical = codes[median_run]
    shown = int(np.sum(test_all[typical] >= 80))
    ax.scatter(params_all[typical], test_all[typical], s=22, marker="o", facecolors="none", edgecolors="tab:blue",
               label=f"archive of the median run by hypervolume ({len(typical)} cells, {shown} above 80 %)")
    up, ua = params_all[union_front], test_all[union_front]
    ax.step(up, ua, where="post", c="tab:red", lw=1.2, ls="--", label=f"front of all {runs} runs' archives")
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("CIFAR-10 test accuracy after 200 epochs (%)")
    ax.set_ylim(80, 95)
    ax.set_title("Multi-objective aging evolution, 12000 s budget\n(searched on 12-epoch validation accuracy vs params)",
                 fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=130)
    plt.close(fig)

    summary = {
        "runs": runs,
        "objectives": ["c10_valid_acc_12 (max)", "cifar10_params_mb (min); no FLOPs column in the table"],
        "searcher": "pareto_evolution(population 10, sample 3): parent = sampled member dominated by fewest",
        "archive_size_mean": float(np.mean([len(c) for c in codes])),
        "archive_overflow_any": bool(np.any(many.state.archive_overflow)),
        "hypervolume_reference": {"params_m": HV_REFERENCE[0], "test_acc": HV_REFERENCE[1]},
        "hypervolume_ratio_mean": round(float(np.mean(ratios)), 4),
        "hypervolume_ratio_std": round(float(np.std(ratios)), 4),
        "true_front_size": int(len(true_front)),
        "union_front_size": int(len(union_front)),
        "union_front_on_true_front": int(np.sum(on_true)),
        "hypervolume_ratio_union": round(hypervolume_2d(params_all[union], test_all[union]) / true_hv, 4),
        "seconds": round(many.seconds, 3),
    }
    print(f"pareto     HV ratio {summary['hypervolume_ratio_mean']:.3f} +- {summary['hypervolume_ratio_std']:.3f} "
          f"per run, {summary['hypervolume_ratio_union']:.3f} union; {summary['union_front_on_true_front']}/"
          f"{summary['union_front_size']} union-front cells on the true front ({len(true_front)})", flush=True)
    return summary


def plot_trajectories(trajectories: dict, path: Path, budget: float) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = {"rea": "tab:red", "reinforce": "tab:green", "random": "tab:blue", "local": "tab:purple"}
    for name, many in trajectories.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # grid times before any query ends
            mean = np.nanmean(many.trajectory, axis=0)
            low, high = np.nanpercentile(many.trajectory, [25, 75], axis=0)
        ax.plot(many.grid, mean, c=colors[name], lw=1.5, label=f"{LABELS[name]} ({mean[-1]:.2f})")
        ax.fill_between(many.grid, low, high, color=colors[name], alpha=0.15, lw=0)
    for name, (mean, _) in PUBLISHED.items():
        ax.axhline(mean, c=colors[name], ls=":", lw=1)
    ax.set_xlim(0, budget)
    ax.set_ylim(92.0, 94.5)
    ax.set_xlabel("simulated search time (s): 12 epochs charged per query")
    ax.set_ylabel("test accuracy of best-validation cell (%)")
    ax.set_title(f"NAS-Bench-201 CIFAR-10, {len(next(iter(trajectories.values())).best_test)} runs each: "
                 "mean, 25-75 % band;\ndotted: published means", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
