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


def required_capacity(encodings: np.ndarray, per_edge: bool = False):
    """Largest number of architectures choosing one op other than ``none`` on one edge (the slots each op needs).

    ``per_edge=True``: one such count per edge (a tuple of 6), what the evaluator accepts too.
    """
    enc = np.asarray(encodings).reshape(-1, space.NUM_EDGES)
    counts = np.stack([(enc == op).sum(0) for op in range(1, space.NUM_OPS)]).max(0)  # (6,)
    if per_edge:
        return tuple(int(max(1, c)) for c in counts)
    return max(1, int(counts.max()))


def prunable(proxies) -> bool:
    """Whether every proxy in ``proxies`` scores an architecture as its pruned form (``Proxy.prunable``)."""
    return all(PROXIES[name].prunable for name in proxies)


def pruned_codes(codes: np.ndarray) -> np.ndarray:
    """Base-5 codes of ``codes`` with their dead edges set to ``none`` (:func:`jnas.spaces.nb201.prune_dead_edges`)."""
    enc = np.asarray(space.code_to_encoding(np.asarray(codes)))
    return np.asarray(space.encoding_to_code(space.prune_dead_edges(enc)), np.int64)


def pack_chunks(codes: np.ndarray, chunk: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Codes laid out in chunks of ``chunk`` with few slots per (edge, op): ``(rows, source)``.

    Pruned sets are not balanced like :func:`balanced_order` (an edge into the output node
    is rarely dead, so its four other ops are each chosen by ~25 % of the distinct
    pruned cells instead of 20 %). A greedy first-fit fills each chunk with architectures
    that keep every (edge, op) count within ``ceil(chunk * f_e)``, ``f_e`` the largest
    share of one op on edge ``e`` over the whole set; what does not fit goes on to the
    next chunk. Chunks are padded with the all-``none`` cell (code 0), which takes no
    slot. ``rows`` ``(n_chunks * chunk,)`` are the codes to evaluate, ``source`` the
    index into ``codes`` of each row (-1 for padding).
    """
    codes = np.asarray(codes, np.int64)
    enc = np.asarray(space.code_to_encoding(codes))
    share = np.asarray(required_capacity(enc, per_edge=True)) / len(codes)
    caps = np.maximum(1, np.ceil(chunk * share - 1e-9)).astype(int)
    remaining = np.random.default_rng(seed).permutation(len(codes))
    rows, source = [], []
    while len(remaining):
        counts = np.zeros((space.NUM_EDGES, space.NUM_OPS), int)
        members, rest = [], []
        for i in remaining:
            ops_i = enc[i]
            if len(members) < chunk and all(o == 0 or counts[e, o] < caps[e] for e, o in enumerate(ops_i)):
                members.append(i)
                counts[np.arange(space.NUM_EDGES), ops_i] += 1
            else:
                rest.append(i)
        pad = chunk - len(members)
        rows.append(np.concatenate([codes[members], np.zeros(pad, np.int64)]))
        source.append(np.concatenate([np.asarray(members, np.int64), -np.ones(pad, np.int64)]))
        remaining = np.asarray(rest, np.int64)
    return np.concatenate(rows), np.concatenate(source)


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
    """Scores of ``n`` architectures: ``scores[name]`` is ``(n, inits)`` float64, rows in ``codes`` order.

    ``networks``: how many distinct networks were evaluated (fewer than ``n`` when dead
    edges were pruned, see :func:`score_archs`); ``capacity``: slots per op on each edge.
    """

    codes: np.ndarray
    scores: dict[str, np.ndarray]
    seconds: float
    compile_seconds: float
    chunk: int
    capacity: tuple[int, ...]
    init_chunk: int = 1
    devices: int = 1
    networks: int = 0
    pruned: bool = False


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


def _layout(codes, chunk, n_devices, pack: bool):
    """``(rows, source)``: codes to evaluate in calls of ``chunk * n_devices``, and each row's index into ``codes`` (-1: padding)."""
    if pack:
        rows, source = pack_chunks(codes, chunk)
        per_call = chunk * n_devices
        extra = -len(rows) % per_call  # whole calls: pad with all-`none` chunks
        return np.concatenate([rows, np.zeros(extra, np.int64)]), np.concatenate([source, -np.ones(extra, np.int64)])
    rows, source = [], []
    for start, (part, valid) in zip(range(0, len(codes), chunk * n_devices), plan_chunks(codes, chunk * n_devices)):
        rows.append(part)
        source.append(np.where(np.arange(len(part)) < valid, start + np.arange(len(part)), -1))
    return np.concatenate(rows), np.concatenate(source)


def score_archs(codes, proxies, config: supernet.SupernetConfig, *, images, labels, inits: int = 1, seed: int = 0,
                chunk: int = 125, init_chunk: int | None = None, capacity: int | tuple[int, ...] | None = None,
                progress: bool = False, devices: str | int | None = None, prune: bool = True) -> ScoreResult:
    """Scores the architectures ``codes`` (base-5 codes) with every proxy in ``proxies``.

    Args:
      codes: ``(n,)`` base-5 codes; :func:`balanced_order` for the whole space.
      proxies: names from ``PROXIES``.
      config: network shape.
      images, labels: the batch ``(B, H, W, C)``, ``(B,)`` fed to data-dependent proxies.
      inits: initialisations per architecture (keys split from ``seed``; every
        architecture sees the same ``inits`` initialisations, whatever its chunk).
      chunk: architectures per compiled call (per device, with ``devices``).
      init_chunk: initialisations per compiled call; ``None``: all ``inits`` if
        ``chunk * inits * b <= MAX_EVALUATIONS`` (else ``MAX_EVALUATIONS // (chunk * b)``,
        at least 1), with ``b`` the batch size if a proxy outside ``SINGLE_INPUT`` is
        asked for, else 1. Each call evaluates ``chunk * init_chunk`` networks, so this bounds
        memory for thousands of inits; the scores do not depend on it (every init's
        key is split from ``seed`` up front).
      capacity: conv slots per op on each edge (an int, or one per edge); ``None``: the
        largest count over all chunks (and over each device's slice of them).
      progress: tqdm bar on stderr.
      devices: ``None``: one device, no mesh; ``"all"`` or N: split every call's
        architectures over that many devices (:func:`jnas.parallel.make_mesh`), ``chunk``
        on each. The scores equal one device's: nwot exactly, the gradient-based proxies
        up to float32 rounding (XLA may fuse a smaller batch of architectures differently).
      prune: evaluate each distinct *pruned* cell once (edges that cannot change the
        output set to ``none``, :func:`jnas.spaces.nb201.prune_dead_edges`) and give its
        score to every architecture that prunes to it, when every proxy asked for allows
        it (``Proxy.prunable``); the whole space has 10,405 distinct pruned cells. The
        scores are the unpruned networks' (equal in float32 in the tests). Ignored when
        ``capacity`` is given (pruned sets are packed by :func:`pack_chunks`, which sets it).
    """
    codes = np.asarray(codes, np.int64)
    mesh = None if devices is None else parallel.make_mesh(devices)
    n_devices = 1 if mesh is None else mesh.devices.size
    pruning = prune and capacity is None and prunable(proxies)
    if pruning:
        distinct, back = np.unique(pruned_codes(codes), return_inverse=True)
    else:
        distinct, back = codes, np.arange(len(codes))
    chunk = max(1, min(int(chunk), -(-len(distinct) // n_devices)))
    rows, source = _layout(distinct, chunk, n_devices, pack=pruning)
    per_call = chunk * n_devices
    encs = [np.asarray(space.code_to_encoding(rows[i : i + per_call])) for i in range(0, len(rows), per_call)]
    if capacity is None:  # each device routes only its own `chunk` rows
        capacity = tuple(np.max([required_capacity(part, per_edge=True) for e in encs for part in np.split(e, n_devices)], 0))
    capacity = tuple(min(c, chunk) for c in network.normalize_capacity(capacity))
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
    found = {name: np.empty((len(distinct), inits)) for name in proxies}

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(distinct), unit="net", desc="scoring", leave=False)
    start = time.perf_counter()
    compile_seconds = 0.0
    pending = None
    calls = [(c, k) for c in range(len(encs)) for k in range(len(key_chunks))]
    for i, (c, k) in enumerate(calls):
        t0 = time.perf_counter()
        # asynchronous dispatch (JAX's default) overlaps the previous chunk's storing with this
        # chunk; under jnas.host_memory (the CLI) CPU calls return when done
        result = scorer(key_chunks[k][0], images, labels, split(encs[c]))
        if pending is not None:
            _store(found, pending, bar)
        if i == 0:
            jax.block_until_ready(result)
            compile_seconds = time.perf_counter() - t0
        pending = (result, source[c * per_call : (c + 1) * per_call], key_chunks[k][1], k == len(key_chunks) - 1)
    if pending is not None:
        _store(found, pending, bar)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    out = {name: values[back] for name, values in found.items()}
    return ScoreResult(codes=codes, scores=out, seconds=seconds, compile_seconds=compile_seconds, chunk=chunk,
                       capacity=capacity, init_chunk=init_chunk, devices=n_devices, networks=len(distinct), pruned=pruning)


def _store(out, pending, bar):
    result, source, init_slice, last = pending
    width = init_slice.stop - init_slice.start
    valid = source >= 0
    for name, values in result.items():
        out[name][source[valid], init_slice] = np.asarray(values, np.float64).T[valid, :width]
    if bar is not None and last:
        bar.update(int(valid.sum()))
