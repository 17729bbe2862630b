"""Helpers shared by the subcommands: validated argument types and one-line errors."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path


class UsageError(Exception):
    """Bad input from the user: printed as one line on stderr, exit code 2, no traceback."""


def fail(message: str, code: int = 2) -> int:
    print(f"jnas: error: {message}", file=sys.stderr)
    return code


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def bounded_int(upper: int):
    """A positive integer no larger than ``upper`` (absurd sizes are refused, not attempted)."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value > upper:
            raise argparse.ArgumentTypeError(f"{value} is absurdly large (at most {upper})")
        return value

    parse.__name__ = "int"
    return parse


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _float(text: str, ok, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    return _float(text, lambda v: v > 0, "a positive number")


def non_negative_float(text: str) -> float:
    return _float(text, lambda v: v >= 0, "a non-negative number")


def print_json(payload) -> None:
    print(json.dumps(payload, sort_keys=False))


def write_json_atomic(path, payload) -> None:
    """Writes JSON to ``path`` through a temporary file and a rename: never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=1)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuses a directory holding a finished run (unless overwrite) or one that cannot be written."""
    if (out / "result.json").exists() and not overwrite:
        raise UsageError(f"{out} already holds a finished run (result.json); pass --overwrite or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"output directory {str(out)!r} is not writable: {err.strerror or err}") from None
