"""``jnas evolve``: discrete searchers on a tabular benchmark, under the time-budget protocol.

Parsing and printing only; the searchers live in ``jnas.search`` and the protocol
in ``jnas.benchmarks.protocol``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import warnings
from pathlib import Path

from jnas.cli.common import UsageError, bounded_int, non_negative_int, print_json

ALGORITHMS = {
    "rea": "regularized evolution (aging; population 10, tournament sample 3, one-edge mutation)",
    "reinforce": "REINFORCE (factorised categorical policy, Adam lr 0.001, baseline momentum 0.9)",
    "random": "random search (uniform cells)",
    "local": "local search (first-improvement hill climbing with restarts)",
}
MAX_RUNS = 100_000


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive, finite number of seconds, got {text!r}")
    if value > 1e9:
        raise argparse.ArgumentTypeError(f"{value:g} s is absurdly large (at most 1e9)")
    return value


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evolve",
        help="run a discrete searcher (REA, REINFORCE, random, local) on a tabular benchmark",
        description=(
            "Runs independent searches under the NAS-Bench-201 protocol: each query "
            "returns the 12-epoch validation accuracy and is charged 12 epochs of "
            "simulated training time (time_200 * 12/200); a search stops at the "
            "budget and reports the 200-epoch CIFAR-10 test accuracy of the "
            "architecture with the best validation accuracy it saw."
        ),
    )
    parser.add_argument("--benchmark", choices=["nb201"], default="nb201", help="tabular benchmark (default: nb201)")
    parser.add_argument(
        "--table",
        metavar="CSV",
        help="NAS-Bench-201 CIFAR-10 table (default: $JNAS_NB201_TABLE, else ../shared/data/nb201/nb201_cifar10.csv)",
    )
    parser.add_argument("--algo", choices=list(ALGORITHMS), default="rea", help="search strategy (default: rea)")
    parser.add_argument(
        "--runs", type=bounded_int(MAX_RUNS), default=500, help="independent runs (default: 500, as published)"
    )
    parser.add_argument(
        "--budget-seconds",
        type=_positive_seconds,
        default=12000.0,
        metavar="T",
        help="simulated search time per run, in seconds (default: 12000, as published)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="base seed; run i uses fold_in(key(seed), i)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    parser.add_argument(
        "--out", metavar="DIR", help="also write DIR/result.json with per-run results and the trajectory"
    )
    parser.set_defaults(run=run)


def _load_benchmark(table_arg):
    from jnas.benchmarks import nb201

    path = table_arg if table_arg is not None else nb201.default_path()
    if path is None:
        raise UsageError(
            "no NAS-Bench-201 table found: pass --table CSV or set $JNAS_NB201_TABLE "
            "(default place: ../shared/data/nb201/nb201_cifar10.csv)"
        )
    try:
        return nb201.load_table(path)
    except nb201.TableError as err:
        raise UsageError(str(err)) from None


def _check_out_dir(out) -> Path | None:
    if out is None:
        return None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a directory")
    return out


def _write_json_atomically(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".result-", suffix=".json")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=1)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _machine() -> str:
    """CPU model and count, for the record next to timings."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cpus, {platform.system()}"


def _nan_to_none(values):
    return [None if v != v else round(float(v), 4) for v in values]


def run(args) -> int:
    out_dir = _check_out_dir(args.out)
    table = _load_benchmark(args.table)

    import jax
    import numpy as np

    from jnas.benchmarks import protocol
    from jnas.search import discrete
    from jnas.spaces import nb201

    benchmark = protocol.nb201_benchmark(table)
    dearest = float(np.max(np.asarray(benchmark.cost)))
    if args.budget_seconds < dearest:
        raise UsageError(
            f"--budget-seconds {args.budget_seconds:g} is below the dearest single query ({dearest:.1f} s "
            "of simulated 12-epoch training), so some runs could report no architecture"
        )
    searcher = discrete.make(args.algo)
    runs = protocol.run_many(
        searcher,
        benchmark,
        num_runs=args.runs,
        seed=args.seed,
        budget_seconds=args.budget_seconds,
        progress=True,
    )
    summary = protocol.summarize(runs)
    result = {
        "algo": args.algo,
        "runs": summary["runs"],
        "test_mean": round(summary["test_mean"], 4),
        "test_std": round(summary["test_std"], 4),
        "valid_mean": round(summary["valid_mean"], 4),
        "seconds": round(runs.seconds, 3),
        "valid_std": round(summary["valid_std"], 4),
        "queries_mean": round(summary["queries_mean"], 2),
        "budget_seconds": args.budget_seconds,
        "seed": args.seed,
        "benchmark": args.benchmark,
        "table": table.path,
    }

    if out_dir is not None:
        trajectory = runs.trajectory
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # grid times before any query ends
            mean = np.nanmean(trajectory, axis=0)
            std = np.nanstd(trajectory, axis=0)
        codes = runs.best_code.astype(int)
        detail = dict(result)
        detail["protocol"] = {
            "reward": "c10_valid_acc_12 (12-epoch validation accuracy, cifar10-valid, mean over seeds)",
            "cost_per_query_seconds": "cifar10_train_time_200_s * 12 / 200",
            "budget_seconds": args.budget_seconds,
            "stop": "the first query that would exceed the budget ends the run; it and later ones are ignored",
            "reported": "c10_test_acc_200 (and c10_valid_acc_200) of the counted query with the best reward",
            "source": "Dong & Yang, NAS-Bench-201, ICLR 2020; D-X-Y/AutoDL-Projects exps/NAS-Bench-201-algos",
        }
        detail["searcher"] = ALGORITHMS[args.algo]
        detail["jax_version"] = jax.__version__
        detail["machine"] = _machine()
        detail["per_run"] = [
            {
                "run": i,
                "index": int(table.index[code]),
                "arch": nb201.format_arch(np.asarray(nb201.code_to_encoding(code))),
                "test": round(float(runs.best_test[i]), 4),
                "valid": round(float(runs.best_valid[i]), 4),
                "reward": round(float(runs.best_reward[i]), 4),
                "queries": int(runs.num_queries[i]),
                "elapsed_seconds": round(float(runs.elapsed[i]), 2),
            }
            for i, code in enumerate(codes)
        ]
        detail["trajectory"] = {
            "seconds": [round(float(t), 2) for t in runs.grid],
            "test_mean": _nan_to_none(mean),
            "test_std": _nan_to_none(std),
        }
        _write_json_atomically(out_dir / "result.json", detail)

    if args.json:
        print_json(result)
    else:
        print(f"algo       {args.algo}: {ALGORITHMS[args.algo]}")
        print(f"runs       {result['runs']} (seed {args.seed}), budget {args.budget_seconds:g} s simulated")
        print(
            f"test acc   {result['test_mean']:.2f} +- {result['test_std']:.2f} %  "
            "(CIFAR-10, 200 epochs, of the best 12-epoch-validation arch)"
        )
        print(f"valid acc  {result['valid_mean']:.2f} +- {result['valid_std']:.2f} %  (200 epochs)")
        print(f"queries    {result['queries_mean']:.1f} per run")
        print(f"seconds    {result['seconds']:.2f} wall-clock (compilation included)")
        if out_dir is not None:
            print(f"wrote      {out_dir / 'result.json'}")
    return 0

