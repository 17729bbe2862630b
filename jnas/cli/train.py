"""``jnas train``: train a genotype's evaluation network from scratch (DARTS protocol)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jnas.cli.common import (UsageError, bounded_int, non_negative_float, non_negative_int, positive_int,
                             prepare_out_dir, print_json, write_json_atomic)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {value}")
    return value


def add_parser(subparsers) -> None:
    from jnas.data import DATASETS

    p = subparsers.add_parser(
        "train",
        help="train a genotype from scratch (DARTS evaluation protocol)",
        description="Trains a DARTS-space genotype's evaluation network from scratch: SGD 0.025 cosine "
        "to 0, momentum 0.9, weight decay 3e-4, gradient clipping 5, drop path, optional auxiliary head "
        "and cutout. Checkpoints every epoch; rerunning with the same --out resumes.",
    )
    p.add_argument("--genotype", default="DARTS_V2",
                   help="a published genotype's name (DARTS_V1, DARTS_V2, PC_DARTS, ...) or a Genotype(...) text")
    p.add_argument("--dataset", default="digits", help=f"data set ({', '.join(DATASETS)})")
    p.add_argument("--data-dir", default=None, help="read the data set's standard files from this directory")
    p.add_argument("--layers", type=bounded_int(1000), default=20, help="number of cells (20)")
    p.add_argument("--channels", type=bounded_int(4096), default=36, help="C, initial channels (36)")
    p.add_argument("--auxiliary", action="store_true", help="auxiliary head (loss weight --auxiliary-weight)")
    p.add_argument("--auxiliary-weight", type=non_negative_float, default=0.4)
    p.add_argument("--cutout", action="store_true", help="cutout augmentation (--cutout-length)")
    p.add_argument("--cutout-length", type=bounded_int(1024), default=16)
    p.add_argument("--drop-path", type=_fraction, default=0.2, help="final drop path probability (0.2)")
    p.add_argument("--epochs", type=bounded_int(100_000), default=600)
    p.add_argument("--batch-size", type=bounded_int(65_536), default=96)
    p.add_argument("--lr", type=non_negative_float, default=0.025, help="initial learning rate")
    p.add_argument("--weight-decay", type=non_negative_float, default=3e-4)
    p.add_argument("--grad-clip", type=non_negative_float, default=5.0)
    p.add_argument("--steps-per-epoch", type=positive_int, default=None,
                   help="cap the steps of every epoch (short runs and smoke tests)")
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first LIMIT images of each split")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", default=None, help="output directory (default: runs/train-<dataset>-seed<K>)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    from jnas.data import DataError
    from jnas.evaluation.train import CheckpointError, TrainConfig, run_training
    from jnas.spaces import darts as space

    try:
        space.from_name_or_text(args.genotype)  # fail fast, before any data is read
        config = TrainConfig(
            genotype=args.genotype, dataset=args.dataset, data_dir=args.data_dir, layers=args.layers,
            channels=args.channels, auxiliary=args.auxiliary, auxiliary_weight=args.auxiliary_weight,
            cutout=args.cutout, cutout_length=args.cutout_length, drop_path=args.drop_path, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
            seed=args.seed, limit=args.limit, steps_per_epoch=args.steps_per_epoch,
        )
    except ValueError as err:
        raise UsageError(str(err)) from None

    out = Path(args.out or f"runs/train-{config.dataset}-seed{config.seed}")
    if args.overwrite and (out / "result.json").exists():
        import shutil

        for name in ("checkpoints", "history.json", "train_config.json"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    prepare_out_dir(out, args.overwrite)
    try:
        result = run_training(config, out, progress=not args.no_progress)
    except (DataError, CheckpointError) as err:
        raise UsageError(str(err)) from None
    write_json_atomic(out / "result.json", result)
    if args.json:
        print_json(result)
    else:
        print(f"test accuracy: {result['test_acc']:.4f}")
    print(f"{result['params']} parameters; {len(result['history'])} epochs; {result['seconds']:.1f} s; "
          f"result: {out / 'result.json'}", file=sys.stderr)
    return 0
