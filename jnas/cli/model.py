"""``jnas model``: facts about an evaluation network (``jnas model params``)."""

from __future__ import annotations

from jnas.cli.common import UsageError, bounded_int, print_json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "model",
        help="facts about a genotype's evaluation network",
        description="Facts about the evaluation network of a DARTS-space genotype.",
    )
    sub = p.add_subparsers(dest="model_command", metavar="WHAT", parser_class=type(p))
    params = sub.add_parser(
        "params",
        help="count the trainable parameters",
        description="Prints the number of trainable parameters of a genotype's evaluation network "
        "(DARTS NetworkCIFAR), e.g. 3349342 for DARTS_V2 at --layers 20 --channels 36.",
    )
    params.add_argument("--space", default="darts", help="search space (darts, darts-s1 .. darts-s4)")
    params.add_argument("--genotype", default="DARTS_V2",
                        help="a published genotype's name (DARTS_V1, DARTS_V2, PC_DARTS, ...) or a Genotype(...) text")
    params.add_argument("--layers", type=bounded_int(1000), default=20, help="number of cells")
    params.add_argument("--channels", type=bounded_int(4096), default=36, help="C, initial channels")
    params.add_argument("--num-classes", type=bounded_int(100_000), default=10)
    params.add_argument("--in-channels", type=bounded_int(64), default=3, help="image channels")
    params.add_argument("--auxiliary", action="store_true", help="include the auxiliary head")
    params.add_argument("--json", action="store_true", help="print a JSON object instead of the bare count")
    params.set_defaults(run=run_params)
    p.set_defaults(run=_missing_subcommand)


def _missing_subcommand(args) -> int:
    raise UsageError("jnas model: name what to compute, e.g. 'jnas model params'")


def run_params(args) -> int:
    from jnas.evaluation import network as enet
    from jnas.spaces import darts as space

    try:
        space.get_space(args.space)
        genotype = space.from_name_or_text(args.genotype)
        config = enet.NetworkConfig(channels=args.channels, layers=args.layers, num_classes=args.num_classes,
                                    in_channels=args.in_channels, auxiliary=args.auxiliary)
    except ValueError as err:  # GenotypeError is a ValueError
        raise UsageError(str(err)) from None
    count = enet.count_params(genotype, config)
    if args.json:
        print_json({"params": count, "genotype": space.format_genotype(genotype), "space": args.space,
                    "layers": args.layers, "channels": args.channels, "num_classes": args.num_classes,
                    "auxiliary": args.auxiliary})
    else:
        print(count)
    return 0
