"""``jnas score``: zero-cost proxies over NAS-Bench-201 architectures, batched."""

from __future__ import annotations

import csv
import os
import sys
import tempfile
from pathlib import Path

from jnas.cli.common import UsageError, add_device_arguments, bounded_int, non_negative_int, print_json, setup_devices


def add_parser(subparsers) -> None:
    from jnas.data import DATASETS
    from jnas.proxies import PROXIES

    p = subparsers.add_parser(
        "score",
        help="score NAS-Bench-201 architectures with zero-cost proxies",
        description="Zero-cost proxies, batched over architectures and initialisations; writes one CSV row per "
        "architecture (mean and std over inits of every proxy).",
    )
    p.add_argument("--space", default="nb201", help="search space (nb201)")
    p.add_argument("--proxy", default="synflow", help=f"comma-separated proxies ({', '.join(PROXIES)})")
    p.add_argument("--archs", default="all", help="'all' (15,625 cells) or N: N architectures drawn at random")
    p.add_argument("--inits", type=bounded_int(100_000), default=1, help="random initialisations per architecture")
    p.add_argument("--batch-size", type=bounded_int(4096), default=16, help="images per batch for data-dependent proxies")
    p.add_argument("--chunk", type=bounded_int(15_625), default=125,
                   help="architectures per compiled call (on each device, with --devices)")
    p.add_argument("--init-chunk", type=bounded_int(1_000_000), default=None,
                   help="initialisations per compiled call (default: all, capped so that a call "
                        "evaluates at most 1024 networks)")
    p.add_argument("--dataset", default="gaussian", help=f"'gaussian' (random N(0,1) images) or a data set ({', '.join(DATASETS)})")
    p.add_argument("--data-dir", default=None, help="read the data set's standard files from this directory")
    p.add_argument("--channels", type=bounded_int(1024), default=16, help="C (16 in NAS-Bench-201)")
    p.add_argument("--cells", type=bounded_int(64), default=5, help="N (5 in NAS-Bench-201)")
    p.add_argument("--image-size", type=bounded_int(512), default=32, help="input height = width (images are resized/padded)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", required=True, help="CSV to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    p.add_argument("--nb201-table", default=None, help="NAS-Bench-201 CSV: add the official index and correlations")
    p.add_argument("--json", action="store_true", help="print one JSON object with the figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-prune", action="store_true",
                   help="evaluate every architecture's network, even those that prune to one already scored "
                        "(by default each distinct pruned cell is scored once when every proxy allows it)")
    add_device_arguments(p, "split the architectures of every call over all (or the first N) devices, "
                            "--chunk on each")
    p.set_defaults(run=run)


def _parse_proxies(text: str) -> list[str]:
    from jnas.proxies import PROXIES

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError("--proxy is empty")
    for name in names:
        if name not in PROXIES:
            raise UsageError(f"unknown proxy {name!r} (known: {', '.join(PROXIES)})")
    if len(set(names)) != len(names):
        raise UsageError(f"--proxy names a proxy twice: {text!r}")
    return names


def _parse_archs(text: str, seed: int):
    import numpy as np

    from jnas.proxies.batched import balanced_order
    from jnas.spaces import nb201 as space

    if text == "all":
        return balanced_order()
    try:
        count = int(text)
    except ValueError:
        raise UsageError(f"--archs must be 'all' or a positive integer, got {text!r}") from None
    if not 0 < count <= space.NUM_ARCHS:
        raise UsageError(f"--archs must lie in 1..{space.NUM_ARCHS}, got {count}")
    return np.random.default_rng(seed).choice(space.NUM_ARCHS, size=count, replace=False)


def load_batch(dataset: str, data_dir, batch_size: int, image_size: int, in_channels: int, seed: int):
    """Images ``(B, S, S, C)`` and labels: Gaussian, or a data set resized (nearest) / channel-replicated."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if dataset == "gaussian":
        return rng.standard_normal((batch_size, image_size, image_size, in_channels)).astype(np.float32), rng.integers(
            0, 10, batch_size).astype(np.int32)
    from jnas.data import DataError, load_dataset

    try:
        data = load_dataset(dataset, split="train", data_dir=data_dir, limit=max(batch_size, 1024))
    except DataError as err:
        raise UsageError(str(err)) from None
    pick = rng.choice(len(data.images), size=batch_size, replace=False)
    images, labels = np.asarray(data.images[pick]), np.asarray(data.labels[pick])
    h = images.shape[1]
    rows = np.minimum((np.arange(image_size) * h) // image_size, h - 1)
    cols = np.minimum((np.arange(image_size) * images.shape[2]) // image_size, images.shape[2] - 1)
    images = images[:, rows][:, :, cols]
    if images.shape[-1] != in_channels:
        images = np.repeat(images[..., :1], in_channels, axis=-1)
    return images.astype(np.float32), labels.astype(np.int32)


def _check_out(path: Path, overwrite: bool) -> None:
    if path.exists() and path.is_dir():
        raise UsageError(f"--out {str(path)!r} is a directory")
    if path.exists() and path.stat().st_size > 0 and not overwrite:
        raise UsageError(f"{path} exists and is not empty; pass --overwrite or choose another --out")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"cannot write {str(path)!r}: {err.strerror or err}") from None


def write_scores_csv(path: Path, result, proxies, table) -> None:
    """One row per architecture, written to a temporary file and renamed (never a torn file)."""
    import numpy as np

    from jnas.spaces import nb201 as space

    header = ["arch"] + (["index"] if table is not None else []) + [f"{n}_{s}" for n in proxies for s in ("mean", "std")]
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(header)
            encs = np.asarray(space.code_to_encoding(result.codes))
            for row, (code, enc) in enumerate(zip(result.codes, encs)):
                line = [space.format_arch(enc)] + ([int(table.index[code])] if table is not None else [])
                for name in proxies:
                    values = result.scores[name][row]
                    line += [repr(float(np.mean(values))), repr(float(np.std(values)))]
                writer.writerow(line)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def correlations(result, proxies, table) -> dict:
    """Spearman and Kendall of each proxy's mean score against ``c10_test_acc_200``."""
    import numpy as np
    from scipy import stats

    accuracy = table["c10_test_acc_200"][result.codes]
    out = {}
    for name in proxies:
        score = np.nan_to_num(result.scores[name].mean(axis=1), nan=-np.inf)
        out[name] = {
            "spearman": float(stats.spearmanr(score, accuracy).statistic),
            "kendall": float(stats.kendalltau(score, accuracy).statistic),
        }
    return out


def run(args) -> int:
    from jnas.supernet.nb201 import SupernetConfig

    if args.space != "nb201":
        raise UsageError(f"unknown space {args.space!r} (known: nb201)")
    proxies = _parse_proxies(args.proxy)
    codes = _parse_archs(args.archs, args.seed)
    devices = setup_devices(args)  # before any JAX computation
    out = Path(args.out)
    _check_out(out, args.overwrite)  # in every process: all of them stop, or none does
    table = None
    if args.nb201_table is not None:
        from jnas.benchmarks.nb201 import TableError, load_table

        try:
            table = load_table(args.nb201_table)
        except TableError as err:
            raise UsageError(str(err)) from None
    try:
        config = SupernetConfig(channels=args.channels, cells=args.cells, image_size=args.image_size)
    except ValueError as err:
        raise UsageError(str(err)) from None
    images, labels = load_batch(args.dataset, args.data_dir, args.batch_size, args.image_size, config.in_channels, args.seed)

    from jnas import parallel
    from jnas.proxies.batched import score_archs

    primary = parallel.is_primary()
    result = score_archs(codes, proxies, config, images=images, labels=labels, inits=args.inits, seed=args.seed,
                         chunk=args.chunk, init_chunk=args.init_chunk,
                         progress=not args.no_progress and primary, devices=devices, prune=not args.no_prune)
    if not primary:
        return 0  # every process holds the same scores; process 0 writes and prints them
    write_scores_csv(out, result, proxies, table)
    n = len(codes)
    summary = {
        "n_archs": n, "inits": args.inits, "seconds": result.seconds, "compile_seconds": result.compile_seconds,
        "archs_per_s": n / result.seconds, "chunk": result.chunk, "init_chunk": result.init_chunk,
        "capacity": result.capacity, "networks": result.networks, "pruned": result.pruned, "devices": result.devices,
        "dataset": args.dataset, "batch_size": args.batch_size, "out": str(out),
    }
    if table is not None:
        summary["proxies"] = {name: {**c, "n_archs": n, "seconds": result.seconds, "archs_per_s": n / result.seconds}
                              for name, c in correlations(result, proxies, table).items()}
    if args.json:
        print_json(summary)
    else:
        print(f"scored {n} architectures x {args.inits} init(s) with {', '.join(proxies)} in {result.seconds:.1f} s "
              f"({n / result.seconds:.1f} archs/s); wrote {out}")
        for name, c in summary.get("proxies", {}).items():
            print(f"{name}: spearman {c['spearman']:.3f}, kendall {c['kendall']:.3f}")
    print(f"compile {result.compile_seconds:.1f} s, {result.networks} networks for {n} architectures, "
          f"chunk {result.chunk}, capacity {result.capacity}, "
          f"devices {result.devices}", file=sys.stderr)
    return 0
