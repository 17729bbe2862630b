"""Scoring many NAS-Bench-201 architectures under many initialisations in jitted chunks.

:func:`make_scorer` compiles ONE function ``(keys (I,), images, labels, encodings (A, 6))
-> {proxy: (I, A)}``: initialisations are ``jax.vmap`` over split keys, architectures an
explicit axis of the discrete-network evaluator (``jnas.proxies.network``), so the same
executable serves every chunk. :func:`score_archs` streams a list of encodings through
it in chunks of ``chunk`` architectures (bounded memory), with a progress bar.

Chunks and capacity: on each edge the evaluator convolves only the architectures that
chose a conv op, in ``capacity`` slots. :func:`balanced_order` orders the whole space
into blocks of 25 in which every edge carries every op exactly 5 times (a Latin design:
edges 0, 1 free, edges 2..5 fixed non-constant linear forms mod 5 of them, plus the block
offsets), so chunks of ``25 m`` need ``capacity = 5 m`` and no unchosen op is computed.
Other sets use the largest per-chunk count.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from jnas import parallel, xla_options
from jnas.proxies import PROXIES, network
from jnas.spaces import nb201 as space
from jnas.supernet import nb201 as supernet

BLOCK = 25
# Network-images (architectures x inits x images per network) one compiled call evaluates
# by default when inits > 1: synflow's backward form (`synflow_abs`, one all-ones image)
# needs ~12 MB per network at C=16, N=5, so about 12 GB (the forward-mode `synflow`
# stores no activations and needs less). Proxies that read the batch count each image.
MAX_EVALUATIONS = 1024
SINGLE_INPUT = frozenset({"synflow", "synflow_abs", "params", "flops"})  # score one input, whatever the batch


def balanced_order() -> np.ndarray:
    """Base-5 codes of all 15,625 cells, in blocks of 25 balanced on every edge."""
    free = np.array(list(itertools.product(range(5), repeat=2)))  # (25, 2): ops of edges 0, 1
    o0, o1 = free[:, 0], free[:, 1]
    codes = []
    for c2, c3, c4, c5 in itertools.product(range(5), repeat=4):
        enc = np.stack([o0, o1, (o0 + c2) % 5, (o1 + c3) % 5, (o0 + o1 + c4) % 5, (o0 + 2 * o1 + c5) % 5], -1)
        codes.append(np.asarray(space.encoding_to_code(enc)))
    return np.concatenate(codes)


def required_capacity(encodings: np.ndarray) -> int:
    """Largest number of architectures choosing one op on one edge (the slots each op needs)."""
    enc = np.asarray(encodings)
    return max(1, int(max((enc == op).sum(0).max() for op in range(space.NUM_OPS))))


@functools.lru_cache(maxsize=32)
def make_scorer(proxies: tuple[str, ...], config: supernet.SupernetConfig, capacity: int | None):
    """Jitted ``(keys, images, labels, encodings) -> {name: (I, A) float32}``."""
    return xla_options.jit(_scorer_fn(proxies, config, capacity))


def _scorer_fn(proxies, config, capacity):
    """:func:`make_scorer`'s function before ``jit`` (compiler options go on the outermost jit only)."""
    fns = [PROXIES[name].fn for name in proxies]

    def one_init(key, images, labels, encodings):
        init_key, proxy_key = jax.random.split(key)
        params = network.init_params(init_key, config)
        return {
            name: fn(params, (images, labels), encodings, jax.random.fold_in(proxy_key, i), config=config, capacity=capacity)
            for i, (name, fn) in enumerate(zip(proxies, fns))
        }

    def scorer(keys, images, labels, encodings):
        return jax.vmap(one_init, in_axes=(0, None, None, None))(keys, images, labels, encodings)

    return scorer


@functools.lru_cache(maxsize=32)
def make_sharded_scorer(proxies: tuple[str, ...], config: supernet.SupernetConfig, capacity: int | None, mesh: Mesh):
    """:func:`make_scorer`'s function with ``A`` split over the devices of ``mesh``.

    ``A`` must be a multiple of the device count: each device runs the unchanged scorer
    on its ``A / N`` architectures with every key, image and label (``capacity`` counts
    per device), and the scores come back replicated. Give it ``encodings`` from
    :func:`jnas.parallel.shard_leading_axis` and the rest from
    :func:`jnas.parallel.replicate`.
    """
    axis = parallel.DATA_AXIS
    # check_vma=False: the evaluator's custom_vjp rules do not carry shard_map's
    # varying-axis types (nothing is reduced over the split axis, so there is nothing to check)
    per_device = jax.shard_map(_scorer_fn(proxies, config, capacity), mesh=mesh,
                               in_specs=(P(), P(), P(), P(axis)), out_specs=P(None, axis), check_vma=False)
    return xla_options.jit(per_device, out_shardings=parallel.replicated_sharding(mesh))


@dataclasses.dataclass
class ScoreResult:
    """Scores of ``n`` architectures: ``scores[name]`` is ``(n, inits)`` float64, rows in ``codes`` order."""

    codes: np.ndarray
    scores: dict[str, np.ndarray]
    seconds: float
    compile_seconds: float
    chunk: int
    capacity: int
    init_chunk: int = 1
    devices: int = 1


def plan_chunks(codes: np.ndarray, chunk: int):
    """Splits ``codes`` into chunks of ``chunk`` (the last padded by repeating its first code)."""
    chunks = []
    for start in range(0, len(codes), chunk):
        part = codes[start : start + chunk]
        valid = len(part)
        if valid < chunk:
            part = np.concatenate([part, np.repeat(part[:1], chunk - valid)])
        chunks.append((part, valid))
    return chunks


def score_archs(codes, proxies, config: supernet.SupernetConfig, *, images, labels, inits: int = 1, seed: int = 0,
                chunk: int = 125, init_chunk: int | None = None, capacity: int | None = None,
                progress: bool = False, devices: str | int | None = None) -> ScoreResult:
    """Scores the architectures ``codes`` (base-5 codes) with every proxy in ``proxies``.

    Args:
      codes: ``(n,)`` base-5 codes; :func:`balanced_order` for the whole space.
      proxies: names from ``PROXIES``.
      config: network shape.
      images, labels: the batch ``(B, H, W, C)``, ``(B,)`` fed to data-dependent proxies.
      inits: initialisations per architecture (keys split from ``seed``; architecture
        ``i`` of every chunk sees the same ``inits`` initialisations).
      chunk: architectures per compiled call (per device, with ``devices``).
      init_chunk: initialisations per compiled call; ``None``: all ``inits`` if
        ``chunk * inits * b <= MAX_EVALUATIONS`` (else ``MAX_EVALUATIONS // (chunk * b)``,
        at least 1), with ``b`` the batch size if a proxy outside ``SINGLE_INPUT`` is
        asked for, else 1. Each call evaluates ``chunk * init_chunk`` networks, so this bounds
        memory for thousands of inits; the scores do not depend on it (every init's
        key is split from ``seed`` up front).
      capacity: conv slots per edge; ``None``: the largest count over all chunks (and
        over each device's slice of them).
      progress: tqdm bar on stderr.
      devices: ``None``: one device, no mesh; ``"all"`` or N: split every call's
        architectures over that many devices (:func:`jnas.parallel.make_mesh`), ``chunk``
        on each. The scores equal one device's: nwot exactly, the gradient-based proxies
        up to float32 rounding (XLA may fuse a smaller batch of architectures differently).
    """
    codes = np.asarray(codes, np.int64)
    mesh = None if devices is None else parallel.make_mesh(devices)
    n_devices = 1 if mesh is None else mesh.devices.size
    chunk = max(1, min(int(chunk), -(-len(codes) // n_devices)))
    chunks = plan_chunks(codes, chunk * n_devices)
    encs = [np.asarray(space.code_to_encoding(part)) for part, _ in chunks]
    if capacity is None:  # each device routes only its own `chunk` rows
        capacity = max(required_capacity(rows) for e in encs for rows in np.split(e, n_devices))
    capacity = min(int(capacity), chunk)
    if mesh is None:
        scorer = make_scorer(tuple(proxies), config, capacity)
    else:
        scorer = make_sharded_scorer(tuple(proxies), config, capacity, mesh)
    if init_chunk is None:
        per_network = 1 if set(proxies) <= SINGLE_INPUT else max(1, len(images))
        budget = MAX_EVALUATIONS // per_network
        init_chunk = inits if chunk * inits <= budget else budget // chunk
    init_chunk = max(1, min(int(init_chunk), inits))
    if mesh is None:
        whole = split = jnp.asarray
    else:  # global arrays on the mesh (also with several processes)
        whole = functools.partial(parallel.replicate, mesh=mesh)
        split = functools.partial(parallel.shard_leading_axis, mesh=mesh)
    keys = jax.random.split(jax.random.key(seed), inits)
    # Init chunks of equal size (one compile): the last is padded with repeats of its first key.
    key_chunks = []
    for begin in range(0, inits, init_chunk):
        idx = np.arange(begin, min(begin + init_chunk, inits))
        width = len(idx)
        idx = np.concatenate([idx, np.repeat(idx[:1], init_chunk - width)])
        key_chunks.append((whole(keys[idx]), slice(begin, begin + width)))
    images = whole(np.asarray(images, np.float32))
    labels = whole(np.asarray(labels, np.int32))
    out = {name: np.empty((len(codes), inits)) for name in proxies}

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(codes), unit="arch", desc="scoring", leave=False)
    start = time.perf_counter()
    compile_seconds = 0.0
    pending = None
    position = 0
    calls = [(c, k) for c in range(len(chunks)) for k in range(len(key_chunks))]
    for i, (c, k) in enumerate(calls):
        t0 = time.perf_counter()
        result = scorer(key_chunks[k][0], images, labels, split(encs[c]))  # dispatched asynchronously
        if pending is not None:
            _store(out, pending, bar)
        if i == 0:
            jax.block_until_ready(result)
            compile_seconds = time.perf_counter() - t0
        pending = (result, position, chunks[c][1], key_chunks[k][1], k == len(key_chunks) - 1)
        position += chunks[c][1] if k == len(key_chunks) - 1 else 0
    if pending is not None:
        _store(out, pending, bar)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return ScoreResult(codes=codes, scores=out, seconds=seconds, compile_seconds=compile_seconds, chunk=chunk,
                       capacity=capacity, init_chunk=init_chunk, devices=n_devices)


def _store(out, pending, bar):
    result, position, valid, init_slice, last = pending
    width = init_slice.stop - init_slice.start
    for name, values in result.items():
        out[name][position : position + valid, init_slice] = np.asarray(values, np.float64).T[:valid, :width]
    if bar is not None and last:
        bar.update(valid)
