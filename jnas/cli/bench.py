"""``jnas bench step``: time one search step and print one JSON line."""

from __future__ import annotations

from jnas.cli.common import UsageError, bounded_int, print_json


def add_parser(subparsers) -> None:
    from jnas.search.darts import HVP_MODES

    p = subparsers.add_parser("bench", help="benchmarks (machine-readable)")
    sub = p.add_subparsers(dest="bench_command", metavar="WHAT", required=True, parser_class=type(p))
    s = sub.add_parser("step", help="time the jitted search step of the NB201 supernet")
    s.add_argument("--space", default="nb201", choices=["nb201"])
    s.add_argument("--method", default="darts", choices=["darts"])
    s.add_argument("--order", type=int, default=1, choices=[1, 2])
    s.add_argument("--hvp", default="finite_difference", choices=HVP_MODES,
                   help="order 2: DARTS's finite-difference Hessian-vector product, or an exact one (double backward)")
    s.add_argument("--batch-size", type=bounded_int(4096), default=64)
    s.add_argument("--channels", type=bounded_int(512), default=16)
    s.add_argument("--cells", type=bounded_int(64), default=5)
    s.add_argument("--image-size", type=bounded_int(512), default=32)
    s.add_argument("--in-channels", type=int, default=3, choices=[1, 3])
    s.add_argument("--num-classes", type=bounded_int(100_000), default=10)
    s.add_argument("--steps", type=bounded_int(10_000), default=5, help="timed steps (median reported)")
    s.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
    s.add_argument("--scan", action="store_true", help="run each stage's cells under lax.scan (faster compile, slower step)")
    s.add_argument("--json", action="store_true", help="print one JSON line (the default output)")
    s.set_defaults(run=run)


def run(args) -> int:
    from jnas.bench import bench_step

    if args.warmup < 0:
        raise UsageError(f"--warmup must be non-negative, got {args.warmup}")
    result = bench_step(
        order=args.order, batch_size=args.batch_size, channels=args.channels, cells=args.cells,
        image_size=args.image_size, in_channels=args.in_channels, num_classes=args.num_classes,
        steps=args.steps, warmup=args.warmup, scan_cells=args.scan, hvp=args.hvp,
    )
    print_json(result)
    return 0
