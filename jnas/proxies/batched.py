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

from jnas.proxies import PROXIES, network
from jnas.spaces import nb201 as space
from jnas.supernet import nb201 as supernet

BLOCK = 25


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

    return jax.jit(scorer)


@dataclasses.dataclass
class ScoreResult:
    """Scores of ``n`` architectures: ``scores[name]`` is ``(n, inits)`` float64, rows in ``codes`` order."""

    codes: np.ndarray
    scores: dict[str, np.ndarray]
    seconds: float
    compile_seconds: float
    chunk: int
    capacity: int


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
                chunk: int = 125, capacity: int | None = None, progress: bool = False) -> ScoreResult:
    """Scores the architectures ``codes`` (base-5 codes) with every proxy in ``proxies``.

    Args:
      codes: ``(n,)`` base-5 codes; :func:`balanced_order` for the whole space.
      proxies: names from ``PROXIES``.
      config: network shape.
      images, labels: the batch ``(B, H, W, C)``, ``(B,)`` fed to data-dependent proxies.
      inits: initialisations per architecture (keys split from ``seed``; architecture
        ``i`` of every chunk sees the same ``inits`` initialisations).
      chunk: architectures per compiled call.
      capacity: conv slots per edge; ``None``: the largest count over all chunks.
      progress: tqdm bar on stderr.
    """
    codes = np.asarray(codes, np.int64)
    chunk = max(1, min(int(chunk), len(codes)))
    chunks = plan_chunks(codes, chunk)
    encs = [np.asarray(space.code_to_encoding(part)) for part, _ in chunks]
    if capacity is None:
        capacity = max(required_capacity(e) for e in encs)
    capacity = min(int(capacity), chunk)
    scorer = make_scorer(tuple(proxies), config, capacity)
    keys = jax.random.split(jax.random.key(seed), inits)
    images = jnp.asarray(images, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    out = {name: np.empty((len(codes), inits)) for name in proxies}

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(codes), unit="arch", desc="scoring", leave=False)
    start = time.perf_counter()
    compile_seconds = 0.0
    pending = None
    position = 0
    for i, ((part, valid), enc) in enumerate(zip(chunks, encs)):
        t0 = time.perf_counter()
        result = scorer(keys, images, labels, jnp.asarray(enc))  # dispatched asynchronously
        if pending is not None:
            position = _store(out, pending, position, bar)
        if i == 0:
            jax.block_until_ready(result)
            compile_seconds = time.perf_counter() - t0
        pending = (result, valid)
    if pending is not None:
        _store(out, pending, position, bar)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return ScoreResult(codes=codes, scores=out, seconds=seconds, compile_seconds=compile_seconds, chunk=chunk, capacity=capacity)


def _store(out, pending, position, bar):
    result, valid = pending
    for name, values in result.items():
        out[name][position : position + valid] = np.asarray(values, np.float64).T[:valid]
    if bar is not None:
        bar.update(valid)
    return position + valid
