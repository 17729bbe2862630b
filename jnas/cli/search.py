"""``jnas search``: a differentiable architecture search, end to end."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from jnas.cli.common import (
    UsageError,
    add_device_arguments,
    bounded_int,
    fail,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    prepare_out_dir,
    setup_devices,
    write_json_atomic,
)


CHECKPOINTS = "checkpoints"  # OUT/checkpoints holds a run's checkpoints
NONFINITE_EXIT = 3  # a search stopped by a NaN/Inf (not bad input: that is 2)
INTERRUPTED_EXIT = 130  # SIGINT, as a shell reports it


def add_parser(subparsers) -> None:
    from jnas.data import DATASETS
    from jnas.search.darts import HVP_MODES
    from jnas.search.runner import DEFAULT_CHECKPOINT_EVERY, METHODS, SPACES

    p = subparsers.add_parser(
        "search",
        help="run a DARTS / PC-DARTS / β-DARTS search (NAS-Bench-201 or DARTS space)",
        description="Differentiable architecture search. With no options: a short DARTS search on "
        "scikit-learn's bundled 8x8 digits (no download), printing the derived cell.",
    )
    p.add_argument("--space", default="nb201", help=f"search space ({', '.join(SPACES)})")
    p.add_argument("--method", default="darts", help=f"search method ({', '.join(METHODS)})")
    p.add_argument("--order", type=int, default=1, help="DARTS order: 1 (first) or 2 (unrolled)")
    p.add_argument("--hvp", default="finite_difference", choices=HVP_MODES,
                   help="order 2's Hessian-vector product: DARTS's finite difference (default) or exact (double backward)")
    p.add_argument("--dataset", default="digits", help=f"data set ({', '.join(DATASETS)})")
    p.add_argument("--data-dir", default=None, help="read the data set's standard files from this directory")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=bounded_int(100_000), default=None,
                        help="search epochs (default: 10 on digits, 50 otherwise)")
    length.add_argument("--steps", type=bounded_int(10_000_000), default=None, help="search steps instead of epochs")
    p.add_argument("--batch-size", type=bounded_int(65_536), default=64, help="images per batch (train and val each)")
    p.add_argument("--channels", type=bounded_int(1024), default=16, help="C, width of the first stage")
    p.add_argument("--cells", type=bounded_int(64), default=None,
                   help="nb201: N, search cells per stage (default 5); darts spaces: cells in all (default 8)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first LIMIT training images")
    p.add_argument("--out", default=None, help="output directory (default: runs/<method>-<dataset>-seed<K>)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--nb201-table", default=None, help="NAS-Bench-201 CSV: look up every derived cell")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    c = p.add_argument_group("checkpoints (in OUT/checkpoints; SIGINT saves one and exits)")
    c.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the run in DIR (its --out) from its newest intact checkpoint; "
                        "pass the same search options as the first time")
    c.add_argument("--checkpoint-every", type=bounded_int(10_000_000), default=None, metavar="N",
                   help="save a checkpoint every N steps and after the last (default: "
                        f"{DEFAULT_CHECKPOINT_EVERY})")
    c.add_argument("--keep", type=bounded_int(1000), default=None, metavar="K",
                   help="keep the newest K checkpoints (default: 3)")
    c.add_argument("--on-nonfinite", choices=["stop", "skip"], default="stop",
                   help="a NaN/Inf loss or gradient: stop with an error (default) or skip the batch's update")
    m = p.add_argument_group("method options (default: the method's published setting)")
    m.add_argument("--partial-channels", type=positive_int, default=None,
                   help="PC-DARTS: K, a 1/K slice of channels goes through the ops (default 4)")
    m.add_argument("--no-edge-normalization", dest="edge_normalization", action="store_false", default=None,
                   help="PC-DARTS: turn edge normalization off (default on)")
    m.add_argument("--arch-warmup-epochs", type=non_negative_int, default=None,
                   help="epochs that train only the weights (PC-DARTS default: 15 of 50, scaled)")
    m.add_argument("--arch-lr", type=positive_float, default=None,
                   help="Adam learning rate of α (DARTS 3e-4, PC-DARTS 6e-4)")
    m.add_argument("--beta-decay", type=non_negative_float, default=None, metavar="LAMBDA",
                   help="β-DARTS regularization, λ growing linearly from 0 (beta-darts default 50; "
                        "also works with pcdarts)")
    d = p.add_argument_group("diagnostics")
    d.add_argument("--hessian-every", type=non_negative_int, default=0, metavar="EPOCHS",
                   help="dominant Hessian eigenvalue of the val loss w.r.t. α every N epochs (0: off)")
    d.add_argument("--hessian-batches", type=bounded_int(64), default=2, help="val batches for the Hessian")
    d.add_argument("--hessian-iters", type=bounded_int(1000), default=20, help="power iterations")
    add_device_arguments(p, "data-parallel: split each global batch over all (or the first N) devices")
    p.set_defaults(run=run)


def run(args) -> int:
    from jnas.checkpoint import DEFAULT_KEEP, CheckpointError
    from jnas.data import DataError
    from jnas.search.runner import (
        DEFAULT_CHECKPOINT_EVERY,
        NonFiniteError,
        SearchConfig,
        SearchInterrupted,
        run_search,
    )

    try:
        config = SearchConfig(
            space=args.space, method=args.method, order=args.order, hvp=args.hvp, dataset=args.dataset,
            data_dir=args.data_dir, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size,
            channels=args.channels, cells=args.cells, seed=args.seed, limit=args.limit,
            partial_channels=args.partial_channels, edge_normalization=args.edge_normalization,
            arch_warmup_epochs=args.arch_warmup_epochs, arch_lr=args.arch_lr, beta_decay=args.beta_decay,
            hessian_every=args.hessian_every, hessian_batches=args.hessian_batches,
            hessian_iters=args.hessian_iters,
        )
    except ValueError as err:
        raise UsageError(str(err)) from None

    table = None
    if args.nb201_table is not None and config.space != "nb201":
        raise UsageError(f"--nb201-table looks up NAS-Bench-201 cells; it does not apply to --space {config.space}")
    if args.nb201_table is not None:
        from jnas.benchmarks.nb201 import TableError, load_table

        try:
            table = load_table(args.nb201_table)
        except TableError as err:
            raise UsageError(str(err)) from None

    devices = setup_devices(args)  # before any JAX computation

    from jnas import parallel

    primary = parallel.is_primary()
    out = Path(args.out or args.resume or f"runs/{config.method}-{config.dataset}-seed{config.seed}")
    if args.resume is not None:
        resume = Path(args.resume)
        if args.out is not None and Path(args.out).absolute() != resume.absolute():
            raise UsageError(f"--resume {args.resume} continues the run in {args.resume}; drop --out {args.out}")
        if not (resume / CHECKPOINTS).is_dir():
            raise UsageError(f"--resume {args.resume}: no {CHECKPOINTS}/ directory there to resume from")
        if (resume / "result.json").exists():
            raise UsageError(f"--resume {args.resume}: that run has finished (result.json); nothing to resume")
    elif (out / CHECKPOINTS).is_dir() and not args.overwrite:
        raise UsageError(f"{out} holds checkpoints of an unfinished run; pass --resume {out} to continue it "
                         "or --overwrite to start over")
    # every process checks the same (shared) directory, so that all of them stop or none does
    prepare_out_dir(out, args.overwrite)
    if primary and args.overwrite and args.resume is None and (out / CHECKPOINTS).is_dir():
        shutil.rmtree(out / CHECKPOINTS)
    try:
        result = run_search(
            config, table=table, progress=not args.no_progress and primary, checkpoint_dir=out / CHECKPOINTS,
            checkpoint_every=args.checkpoint_every or DEFAULT_CHECKPOINT_EVERY,
            keep=args.keep or DEFAULT_KEEP, resume=args.resume is not None, on_nonfinite=args.on_nonfinite,
            devices=devices,
        )
    except (DataError, CheckpointError) as err:
        raise UsageError(str(err)) from None
    except OSError as err:  # e.g. a data directory without read permission, a full disk
        raise UsageError(f"{err.filename or out}: {err.strerror or err}") from None
    except NonFiniteError as err:
        return fail(f"{err}", code=NONFINITE_EXIT)
    except SearchInterrupted as stop:
        print(f"jnas: interrupted after step {stop.step}; checkpoint saved in {stop.path}; "
              f"continue with: jnas search ... --resume {out}", file=sys.stderr)
        return INTERRUPTED_EXIT
    if not primary:
        return 0  # every process computed the same result; process 0 writes and prints it
    write_json_atomic(out / "result.json", result)

    print(f"derived cell: {result['genotype']}")
    if "nb201" in result:
        nb = result["nb201"]
        print(f"NAS-Bench-201 index {nb['index']}: CIFAR-10 test {nb['c10_test_acc_200']:.2f} %")
    last = result["history"][-1]
    print(f"final epoch: train acc {last['train_acc']:.3f}, val acc {last['val_acc']:.3f}; "
          f"{result['seconds']:.1f} s; result: {out / 'result.json'}", file=sys.stderr)
    return 0
