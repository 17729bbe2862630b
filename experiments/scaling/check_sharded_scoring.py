"""Checks the README's proposed ``score_archs(..., devices=N)`` patch before it is applied.

Re-types the patch's chunking and ``jax.shard_map`` around
``jnas.proxies.batched.make_scorer`` (without editing ``jnas/proxies/batched.py``) and
compares its scores with the single-device ``score_archs`` at the same per-device chunk.
4 simulated CPU devices, 16 random cells, 2 initialisations, synflow / nwot / snip.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
        python experiments/scaling/check_sharded_scoring.py      # ~4 CPU-minutes (compiles)

Result (2 shared cores, jax 0.10.2, XLA's default flags): nwot bitwise identical;
synflow within 9.5e-7 and snip within 1.9e-6 absolute (float32 rounding: the same 4-cell
scorer, but compiled inside the shard_map module, where XLA may fuse it differently;
with --xla_backend_optimization_level=0 snip was bitwise identical too); the
non-finite scores (2 of 32 for synflow and nwot) in the same places with the same values.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jnas import parallel
from jnas.proxies import batched
from jnas.spaces import nb201 as space
from jnas.supernet import nb201 as supernet

CONFIG = supernet.SupernetConfig(channels=4, cells=1, image_size=8)
PROXIES = ("synflow", "nwot", "snip")
CHUNK, DEVICES, INITS = 4, 4, 2


def main():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 8)
    codes = rng.choice(5 ** space.NUM_EDGES, 16, replace=False)
    ref = batched.score_archs(codes, PROXIES, CONFIG, images=images, labels=labels, inits=INITS,
                              chunk=CHUNK, capacity=CHUNK)

    mesh = parallel.make_mesh(DEVICES)
    scorer = jax.jit(jax.shard_map(
        batched.make_scorer(PROXIES, CONFIG, CHUNK), mesh=mesh,
        in_specs=(P(), P(), P(), P(parallel.DATA_AXIS)), out_specs=P(None, parallel.DATA_AXIS), check_vma=False))
    keys = jax.random.split(jax.random.key(0), INITS)  # as score_archs with seed 0
    got = {name: [] for name in PROXIES}
    for part, valid in batched.plan_chunks(np.asarray(codes, np.int64), CHUNK * DEVICES):
        enc = parallel.shard_leading_axis(np.asarray(space.code_to_encoding(part)), mesh)
        result = scorer(keys, jnp.asarray(images), jnp.asarray(labels, jnp.int32), enc)
        for name in PROXIES:
            got[name].append(np.asarray(result[name], np.float64).T[:valid])

    for name in PROXIES:
        mine, theirs = np.concatenate(got[name]), ref.scores[name]
        finite = np.isfinite(theirs)
        print(f"{name}: same non-finite places and values: "
              f"{np.array_equal(finite, np.isfinite(mine)) and np.array_equal(mine[~finite], theirs[~finite], equal_nan=True)}"
              f" ({(~finite).sum()} of {theirs.size}); max |diff| of finite: {np.abs(mine[finite] - theirs[finite]).max():.3g}"
              f"; bitwise equal: {np.array_equal(mine, theirs, equal_nan=True)}")


if __name__ == "__main__":
    main()
