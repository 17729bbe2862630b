"""In-process A/B: one balanced chunk of the full space vs one packed chunk of distinct pruned cells.

Usage (from the repository root):

    python experiments/zero_cost/prune_ab.py --proxy jacob_cov --chunk 25 --reps 6

Both scorers are compiled in one process and called alternately (this machine is shared
and noisy); prints one JSON line: the per-edge capacities, median seconds per chunk, the
chunk counts for the whole space (625 balanced chunks of 25, or however many
``pack_chunks`` needs for the 10,405 distinct pruned cells) and the projected scoring
time of each, whose ratio is what pruning saves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jnas import xla_options  # noqa: E402
from jnas.proxies import batched  # noqa: E402
from jnas.spaces import nb201 as space  # noqa: E402
from jnas.supernet.nb201 import SupernetConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proxy", default="jacob_cov")
    p.add_argument("--chunk", type=int, default=25)
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    chunk = args.chunk
    images = jax.random.normal(jax.random.key(1), (args.batch_size, 32, 32, 3))
    labels = jnp.arange(args.batch_size) % 10
    keys = jax.random.split(jax.random.key(0), 1)
    full = batched.balanced_order()
    rows, _ = batched.pack_chunks(np.unique(batched.pruned_codes(full)), chunk)
    encode = lambda codes: np.asarray(space.code_to_encoding(codes))  # noqa: E731
    packed_caps = tuple(int(c) for c in np.max([batched.required_capacity(encode(rows[i:i + chunk]), per_edge=True)
                                                for i in range(0, len(rows), chunk)], 0))
    cases = {"balanced": (full[:chunk], batched.required_capacity(encode(full[:chunk]), per_edge=True)),
             "packed": (rows[:chunk], packed_caps)}
    compiled, record = {}, {"proxy": args.proxy, "chunk": chunk, "batch_size": args.batch_size}
    for name, (codes, caps) in cases.items():
        enc = jnp.asarray(encode(codes))
        t0 = time.perf_counter()
        fn = jax.jit(batched._scorer_fn((args.proxy,), SupernetConfig(), caps),
                     compiler_options=xla_options.compiler_options())
        compiled[name] = (fn.lower(keys, images, labels, enc).compile(), enc)
        record[f"{name}_capacity"] = list(caps)
        record[f"{name}_compile_s"] = time.perf_counter() - t0
    times = {name: [] for name in compiled}
    for _ in range(args.reps):
        for name, (fn, enc) in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(keys, images, labels, enc))
            times[name].append(time.perf_counter() - t0)
    chunks = {"balanced": len(full) // chunk, "packed": len(rows) // chunk}
    for name in compiled:
        record[f"{name}_chunk_s"] = times[name]
        record[f"{name}_median_chunk_s"] = float(np.median(times[name]))
        record[f"{name}_chunks"] = chunks[name]
        record[f"{name}_projected_s"] = chunks[name] * record[f"{name}_median_chunk_s"]
    record["pruning_gain"] = record["balanced_projected_s"] / record["packed_projected_s"]
    print(json.dumps(record))


if __name__ == "__main__":
    main()
