"""``jnas evolve``: discrete searchers on a tabular benchmark, under the time-budget protocol.

Parsing and printing only; the searchers live in ``jnas.search`` and the protocol
in ``jnas.benchmarks.protocol``.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import signal
import sys
import threading
import warnings
from pathlib import Path

from jnas.bench import machine_description
from jnas.cli.common import (
    UsageError,
    add_device_arguments,
    bounded_int,
    non_negative_int,
    positive_int,
    prepare_out_dir,
    print_json,
    setup_devices,
    write_json_atomic,
)

ALGORITHMS = {
    "rea": "regularized evolution (aging; population 10, tournament sample 3, one-edge mutation)",
    "reinforce": "REINFORCE (factorised categorical policy, Adam lr 0.001, baseline momentum 0.9)",
    "random": "random search (uniform cells)",
    "local": "local search (first-improvement hill climbing with restarts)",
}
MAX_RUNS = 100_000
CHUNK_RUNS = 100
CHECKPOINTS = "checkpoints"
INTERRUPTED_EXIT = 130


class _Interrupted(Exception):
    def __init__(self, chunks: int, path):
        super().__init__(f"interrupted after {chunks} chunks")
        self.chunks, self.path = chunks, path


class _InterruptToCheckpoint:
    """SIGINT sets a flag; the next chunk boundary saves its checkpoint and stops."""

    def __init__(self, enabled: bool):
        self.flag = False
        self._previous = None
        self._enabled = enabled and threading.current_thread() is threading.main_thread()

    def __enter__(self):
        if self._enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.flag = True

    def __exit__(self, *exc):
        if self._enabled:
            signal.signal(signal.SIGINT, self._previous)
        return False

    def wrap(self, on_chunk):
        def wrapped(chunks, buffers):
            path = on_chunk(chunks, buffers)
            if self.flag:
                raise _Interrupted(chunks, path)

        return wrapped


def _file_digest(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_resume(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuses to resume what cannot be, and to start over what holds a run, before any work."""
    checkpoints = out / CHECKPOINTS
    if resume:
        if not checkpoints.is_dir():
            raise UsageError(f"--resume {out}: no {CHECKPOINTS}/ directory there to resume from")
        if (out / "result.json").exists():
            raise UsageError(f"--resume {out}: that run has finished (result.json); nothing to resume")
    elif checkpoints.is_dir() and not overwrite and not (out / "result.json").exists():
        # (a finished run keeps its checkpoints; prepare_out_dir refuses it as finished)
        raise UsageError(f"{out} holds checkpoints of an unfinished run; pass --resume {out} to continue it "
                         "or --overwrite to start over")


def _chunk_checkpoints(directory: Path, config: dict, keep, resume: bool) -> dict:
    """``resume``/``on_chunk`` hooks of :func:`jnas.benchmarks.protocol.run_many` on orbax checkpoints."""
    import jax
    import numpy as np

    from jnas import checkpoint

    store = checkpoint.Checkpoints(directory, "evolve", config, keep=keep or checkpoint.DEFAULT_KEEP)

    def restore(template):
        if not resume:
            return None
        like = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), template)
        restored = store.restore(like)
        if restored is None:
            return None
        print(f"jnas: resuming from {restored.path} ({restored.meta['chunks_done']} chunk(s) of runs done)",
              file=sys.stderr, flush=True)
        return restored.meta["chunks_done"], restored.arrays

    def on_chunk(chunks_done, buffers):
        return store.save(chunks_done, buffers, {"chunks_done": chunks_done})

    return {"resume": restore, "on_chunk": on_chunk, "close": store.close}


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
        help="run a discrete searcher (REA, REINFORCE, random, local) on a tabular benchmark or a supernet",
        description=(
            "Runs independent searches under the NAS-Bench-201 protocol: each query "
            "returns the 12-epoch validation accuracy and is charged 12 epochs of "
            "simulated training time (time_200 * 12/200); a search stops at the "
            "budget and reports the 200-epoch CIFAR-10 test accuracy of the "
            "architecture with the best validation accuracy it saw. With --supernet, the "
            "fitness is instead a SPOS-trained supernet's held-out accuracy."
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
        "--runs", type=bounded_int(MAX_RUNS), default=None,
        help=f"independent runs (default: 500 as published; {SUPERNET_DEFAULT_RUNS} with --supernet)"
    )
    parser.add_argument(
        "--budget-seconds",
        type=_positive_seconds,
        default=None,
        metavar="T",
        help="tabular mode: simulated search time per run, in seconds (default: 12000, as published)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="base seed; run i uses fold_in(key(seed), i)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    parser.add_argument(
        "--out", metavar="DIR",
        help="also write DIR/result.json with per-run results and the trajectory "
        "(--supernet: always written; default runs/supernet-ALGO-DATASET-seedK)"
    )
    parser.add_argument("--chunk-runs", type=bounded_int(MAX_RUNS), default=None, metavar="N",
                        help="runs per vmapped call, the unit of checkpointing the searches "
                             "(default: 100 in the tabular mode, all runs at once with --supernet)")
    ckpt = parser.add_argument_group(
        "checkpoints (in OUT/checkpoints; tabular mode, with --out: after every chunk of runs; --supernet: "
        "every --checkpoint-every SPOS steps, after training and Kendall, after every chunk of runs; "
        "SIGINT saves one and exits)")
    ckpt.add_argument("--resume", metavar="DIR", default=None,
                      help="continue the run in DIR (its --out) from its newest intact checkpoint; "
                           "pass the same options as the first time")
    ckpt.add_argument("--keep", type=bounded_int(1000), default=None, metavar="K",
                      help="keep the newest K checkpoints (default: 3)")
    ckpt.add_argument("--checkpoint-every", type=bounded_int(10_000_000), default=None, metavar="N",
                      help="--supernet: save a checkpoint every N SPOS steps and after the last "
                           "(default: 50)")
    group = parser.add_argument_group(
        "weight-sharing mode (--supernet)",
        "Instead of the table, a query's fitness is the held-out accuracy of the cell in a supernet "
        "trained beforehand by SPOS (uniform single-path sampling); each run makes a fixed number of "
        "queries, and its best cell is looked up in the table (c10_test_acc_200).",
    )
    group.add_argument("--supernet", action="store_true", help="weight-sharing mode (excludes --budget-seconds)")
    group.add_argument("--dataset", default=None, help="data set: digits, fashion_mnist, cifar10, cifar100 (default: digits)")
    group.add_argument("--data-dir", default=None, help="read the data set's standard files from this directory")
    group.add_argument("--limit", type=positive_int, default=None, help="use only the first LIMIT training images")
    group.add_argument("--channels", type=bounded_int(1024), default=None, help="supernet width C (default: 8)")
    group.add_argument("--cells", type=bounded_int(64), default=None, help="cells per stage N (default: 1)")
    group.add_argument("--batch-size", type=bounded_int(65_536), default=None,
                       help="training and evaluation batch (default: 64)")
    group.add_argument("--train-steps", type=bounded_int(10_000_000), default=None,
                       help="SPOS training steps (default: 200)")
    group.add_argument("--queries", type=bounded_int(1_000_000), default=None, help="queries per run (default: 50)")
    group.add_argument("--kendall-cells", type=bounded_int(15625), default=None,
                       help="distinct random cells for Kendall tau (default: 200)")
    group.add_argument("--eval-images", type=positive_int, default=None,
                       help="held-out images scoring each cell (default: the whole held-out half)")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_arguments(parser, "--supernet: split the runs of every vmapped call, and Kendall's cells, over all "
                                 "(or the first N) devices; --runs and --chunk-runs must be multiples of N")
    parser.set_defaults(run=run)


SUPERNET_DEFAULT_RUNS = 10
SUPERNET_ONLY = ("dataset", "data_dir", "limit", "channels", "cells", "batch_size", "train_steps", "queries",
                 "kendall_cells", "eval_images")
DEVICE_FLAGS = ("devices", "coordinator", "num_processes", "process_id")  # --supernet only too


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


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






def _nan_to_none(values):
    return [None if v != v else round(float(v), 4) for v in values]


def run(args) -> int:
    if args.supernet:
        if args.budget_seconds is not None:
            raise UsageError("--budget-seconds belongs to the tabular mode; --supernet runs a fixed number of --queries")
        return run_supernet(args)
    given = [_flag(name) for name in (*SUPERNET_ONLY, "checkpoint_every", *DEVICE_FLAGS)
             if getattr(args, name) is not None]
    given += [_flag(name) for name in ("no_progress",) if getattr(args, name)]
    if given:
        raise UsageError(f"{', '.join(given)} only apply with --supernet")
    if args.budget_seconds is None:
        args.budget_seconds = 12000.0
    if args.runs is None:
        args.runs = 500
    if args.resume is not None:
        if args.out is not None and Path(args.out).absolute() != Path(args.resume).absolute():
            raise UsageError(f"--resume {args.resume} continues the run in {args.resume}; drop --out {args.out}")
        args.out = args.resume
    out_dir = _check_out_dir(args.out)
    if args.keep is not None and out_dir is None:
        raise UsageError("--keep applies to checkpoints, which need --out")
    if out_dir is not None:
        _check_resume(out_dir, args.resume is not None, args.overwrite)
    table = _load_benchmark(args.table)

    import jax
    import numpy as np

    from jnas.benchmarks import protocol
    from jnas.checkpoint import CheckpointError
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
    chunk = args.chunk_runs or CHUNK_RUNS
    hooks = {}
    if out_dir is not None:
        prepare_out_dir(out_dir, args.overwrite)
        if args.overwrite and args.resume is None and (out_dir / CHECKPOINTS).is_dir():
            shutil.rmtree(out_dir / CHECKPOINTS)
        config = {"mode": "tabular", "algo": args.algo, "runs": args.runs, "seed": args.seed,
                  "budget_seconds": args.budget_seconds, "benchmark": args.benchmark,
                  "chunk_runs": chunk, "table_digest": _file_digest(table.path)}
        hooks = _chunk_checkpoints(out_dir / CHECKPOINTS, config, args.keep, args.resume is not None)
    try:
        with _InterruptToCheckpoint(enabled=bool(hooks)) as interrupt:
            if hooks:
                hooks = hooks | {"on_chunk": interrupt.wrap(hooks["on_chunk"])}
            runs = protocol.run_many(
                searcher,
                benchmark,
                num_runs=args.runs,
                seed=args.seed,
                budget_seconds=args.budget_seconds,
                chunk_size=chunk,
                progress=True,
                resume=hooks.get("resume"),
                on_chunk=hooks.get("on_chunk"),
            )
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    except _Interrupted as stop:
        print(f"jnas: interrupted after {stop.chunks} chunk(s) of runs; checkpoint saved in {stop.path}; "
              f"continue with: jnas evolve ... --resume {out_dir}", file=sys.stderr)
        return INTERRUPTED_EXIT
    finally:
        if "close" in hooks:
            hooks["close"]()
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
        detail["machine"] = machine_description()
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
        write_json_atomic(out_dir / "result.json", detail)

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



def run_supernet(args) -> int:
    """``jnas evolve --supernet``: SPOS supernet, Kendall tau, vmapped searches."""
    from jnas.checkpoint import DEFAULT_KEEP, CheckpointError
    from jnas.data import DataError
    from jnas.search.oneshot_runner import DEFAULT_CHECKPOINT_EVERY, OneShotConfig, OneShotInterrupted, run_oneshot

    settings = {name: getattr(args, name) for name in SUPERNET_ONLY if getattr(args, name) is not None}
    try:
        config = OneShotConfig(algo=args.algo, runs=args.runs or SUPERNET_DEFAULT_RUNS, seed=args.seed,
                               chunk_runs=args.chunk_runs, **settings)
    except ValueError as err:
        raise UsageError(str(err)) from None
    devices = setup_devices(args)  # before any JAX computation
    if devices is not None:
        try:
            config.check_devices(devices)
        except ValueError as err:
            raise UsageError(f"--devices {devices}: {err} (see --runs, --chunk-runs)") from None

    from jnas import parallel

    primary = parallel.is_primary()
    if args.resume is not None:
        if args.out is not None and Path(args.out).absolute() != Path(args.resume).absolute():
            raise UsageError(f"--resume {args.resume} continues the run in {args.resume}; drop --out {args.out}")
        args.out = args.resume
    out = Path(args.out or f"runs/supernet-{config.algo}-{config.dataset}-seed{config.seed}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a directory")
    _check_resume(out, args.resume is not None, args.overwrite)
    table = _load_benchmark(args.table)
    prepare_out_dir(out, args.overwrite)  # in every process: all of them stop, or none does
    if primary and args.overwrite and args.resume is None and (out / CHECKPOINTS).is_dir():
        shutil.rmtree(out / CHECKPOINTS)
    try:
        result = run_oneshot(config, table, progress=not args.no_progress and primary,
                             checkpoint_dir=out / CHECKPOINTS,
                             checkpoint_every=args.checkpoint_every or DEFAULT_CHECKPOINT_EVERY,
                             keep=args.keep or DEFAULT_KEEP, resume=args.resume is not None, devices=devices)
    except (DataError, CheckpointError) as err:
        raise UsageError(str(err)) from None
    except OneShotInterrupted as stop:
        print(f"jnas: interrupted after {stop.where}; checkpoint saved in {stop.path}; "
              f"continue with: jnas evolve --supernet ... --resume {out}", file=sys.stderr)
        return INTERRUPTED_EXIT
    if not primary:
        return 0  # every process computed the same result; process 0 writes and prints it
    result["machine"] = machine_description()
    write_json_atomic(out / "result.json", result)

    summary = {
        "mode": "supernet",
        "algo": config.algo,
        "runs": config.runs,
        "queries": config.queries,
        "kendall_tau": result["kendall"]["tau_b"],
        "kendall_cells": config.kendall_cells,
        "test_mean": result["test_mean"],
        "test_std": result["test_std"],
        "supernet_acc_mean": result["supernet_acc_mean"],
        "seconds": result["seconds"]["total"],
        "out": str(out / "result.json"),
    }
    if args.json:
        print_json(summary)
    else:
        last = result["history"][-1]
        print(f"algo       {config.algo}: {ALGORITHMS[config.algo]}, fitness = supernet held-out accuracy")
        print(f"supernet   {config.train_steps} SPOS steps on {config.dataset}: last loss {last['loss']:.3f}, "
              f"train acc {last['accuracy']:.3f}")
        print(f"kendall    tau_b {summary['kendall_tau']:.3f} over {config.kendall_cells} random cells "
              "(supernet acc vs NB201 c10_test_acc_200)")
        print(f"test acc   {summary['test_mean']:.2f} +- {summary['test_std']:.2f} %  (NB201 CIFAR-10, 200 epochs, "
              f"of each run's best-fitness cell; {config.runs} runs x {config.queries} queries)")
        print(f"seconds    {summary['seconds']:.1f} wall-clock")
        print(f"wrote      {out / 'result.json'}")
    return 0
