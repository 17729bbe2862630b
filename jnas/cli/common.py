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


def coordinator_address(text: str) -> str:
    """``HOST:PORT`` (a port in 1..65535) or ``auto``."""
    if text == "auto":
        return text
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (a port in 1..65535) or 'auto', got {text!r}")
    return text


def add_device_arguments(parser, devices_help: str) -> None:
    """The ``--devices`` and multi-host flags of ``jnas search``, ``score`` and ``evolve``.

    Args:
      parser: the subcommand's parser.
      devices_help: what ``--devices`` splits over the devices, e.g. "split each global
        batch over all (or the first N) devices".
    """
    group = parser.add_argument_group(
        "devices and hosts (see experiments/scaling/README.md)",
        "Several processes (one per host): start the same command in each, with its own --process-id; "
        "every process must see the same files (a shared file system). Only process 0 writes results, "
        "checkpoints included, and prints them.")
    group.add_argument("--devices", default=None, metavar="all|N",
                       help=f"{devices_help} (default: one device; with several processes: all of them)")
    group.add_argument("--coordinator", type=coordinator_address, default=None, metavar="HOST:PORT|auto",
                       help="process 0's address, on which it starts the coordinator; 'auto': detect a Cloud TPU, "
                            "Slurm or Open MPI cluster (default: $JAX_COORDINATOR_ADDRESS; neither: one process)")
    group.add_argument("--num-processes", type=positive_int, default=None, metavar="P",
                       help="processes in all (default: $JAX_NUM_PROCESSES, or detected with 'auto')")
    group.add_argument("--process-id", type=non_negative_int, default=None, metavar="I",
                       help="this process's rank in 0..P-1 (default: $JAX_PROCESS_ID, or detected with 'auto')")


def setup_devices(args) -> int | None:
    """Starts multi-process JAX if the flags (or ``JAX_*`` variables) ask for it; resolves ``--devices``.

    Call it before any JAX computation (in every process). Afterwards,
    ``jnas.parallel.is_primary()`` says whether this process writes the results.

    Returns:
      The number of devices to split over, or None: one device and no mesh (no
      ``--devices`` in a single process).

    Raises:
      UsageError: a flag combination that cannot start (``--num-processes`` or
        ``--process-id`` without a coordinator, ``--coordinator HOST:PORT`` without
        both, a rank out of range), a failed start, or a ``--devices`` that the visible
        devices cannot satisfy.
    """
    from jnas import parallel

    coordinator = args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = args.num_processes if args.num_processes is not None else os.environ.get("JAX_NUM_PROCESSES")
    process_id = args.process_id if args.process_id is not None else os.environ.get("JAX_PROCESS_ID")
    if coordinator is None:
        given = [flag for flag, value in (("--num-processes", args.num_processes), ("--process-id", args.process_id))
                 if value is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} given without --coordinator HOST:PORT (or 'auto')")
    elif coordinator != "auto":
        missing = [flag for flag, value in (("--num-processes P", num_processes), ("--process-id I", process_id))
                   if value is None]
        if missing:
            raise UsageError(f"--coordinator {coordinator} needs {' and '.join(missing)} (one process per rank)")
    if args.num_processes is not None and args.process_id is not None and args.process_id >= args.num_processes:
        raise UsageError(f"--process-id {args.process_id} must lie in 0..{args.num_processes - 1} "
                         f"(--num-processes {args.num_processes})")
    try:
        distributed = parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    except (ValueError, RuntimeError) as err:  # bad JAX_* values; no coordinator reached in time
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"multi-process JAX did not start: {reason}") from None
    devices = args.devices if args.devices is not None else ("all" if distributed else None)
    if devices is None:
        return None
    try:
        return parallel.device_count(devices)
    except ValueError as err:
        raise UsageError(f"--devices: {err}") from None
