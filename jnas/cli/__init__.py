"""The ``jnas`` command line: argument parsing and printing only.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and
``run(args) -> int``. Library code never imports this package.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from jnas.cli.common import UsageError, fail

# subcommand name -> module under jnas.cli
COMMANDS = {
    "search": "search",
    "bench": "bench",
    "evolve": "evolve",
    "score": "score",
    "train": "train",
    "model": "model",
}


class _Parser(argparse.ArgumentParser):
    """argparse errors as one line on stderr and exit code 2, without the usage block."""

    def error(self, message):
        print(f"jnas: error: {self.prog}: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jnas", description="A JAX engine for neural architecture search.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS.values():
        try:
            module = importlib.import_module(f"jnas.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"jnas.cli.{name}":
                continue  # a subcommand not built yet
            raise
        module.add_parser(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    # XLA's CPU buffers from memory the process keeps (jnas.host_memory; JNAS_REUSE_HOST_MEMORY=0: off)
    from jnas import host_memory

    host_memory.reuse_unless_disabled()
    try:
        return int(args.run(args) or 0)
    except UsageError as err:
        return fail(str(err))
    except KeyboardInterrupt:
        print("jnas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
