"""The NAS-Bench-201 cell search space.

A cell is a DAG over 4 nodes with an edge ``i -> j`` for every ``i < j`` (6 edges).
Each edge carries one of 5 operations. An architecture is *encoded* as an int array
of shape ``(6,)`` holding the op index of every edge, edges in the benchmark's order
``0->1, 0->2, 1->2, 0->3, 1->3, 2->3`` (the order of the official arch string
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``).

The internal *code* of an architecture is the base-5 integer ``sum_e op_e * 5**e``;
it is NOT the official NAS-Bench-201 index, which is the benchmark's own shuffled
order and only reachable through a benchmark table (see ``jnas.benchmarks.nb201``).

References:
  Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural
  Architecture Search", ICLR 2020.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NUM_OPS = len(OPS)
NUM_NODES = 4
# (source, target) of every edge, in the order of the official arch string.
EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
NUM_EDGES = len(EDGES)
NUM_ARCHS = NUM_OPS**NUM_EDGES  # 15,625
PARAMETER_FREE_OPS: tuple[str, ...] = ("none", "skip_connect", "avg_pool_3x3")

_OP_INDEX = {name: i for i, name in enumerate(OPS)}
_TOKEN = re.compile(r"^([A-Za-z0-9_]+)~(\d+)$")


class ArchStringError(ValueError):
    """A NAS-Bench-201 arch string that cannot be parsed; the message names the bad part."""


def parse(arch: str) -> np.ndarray:
    """Parses an official arch string into an encoding (int32 array of shape ``(6,)``).

    Args:
      arch: e.g. ``|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|``.

    Raises:
      ArchStringError: naming the node group or token that is malformed, the unknown
        op, or the wrong source node.
    """
    if not isinstance(arch, str):
        raise ArchStringError(f"arch string must be a str, got {type(arch).__name__}")
    text = arch.strip()
    groups = text.split("+")
    if len(groups) != NUM_NODES - 1:
        raise ArchStringError(
            f"arch string {arch!r} has {len(groups)} node group(s) separated by '+', expected {NUM_NODES - 1}"
        )
    encoding = np.zeros(NUM_EDGES, dtype=np.int32)
    edge = 0
    for target, group in enumerate(groups, start=1):
        if len(group) < 2 or not (group.startswith("|") and group.endswith("|")):
            raise ArchStringError(f"node {target} group {group!r} in {arch!r} must be enclosed in '|'")
        tokens = group[1:-1].split("|")
        if len(tokens) != target:
            raise ArchStringError(
                f"node {target} group {group!r} in {arch!r} has {len(tokens)} edge(s), expected {target}"
            )
        for source, token in enumerate(tokens):
            match = _TOKEN.fullmatch(token)
            if match is None:
                raise ArchStringError(f"malformed edge {token!r} in {arch!r}: expected 'op~source'")
            op, src = match.group(1), int(match.group(2))
            if op not in _OP_INDEX:
                raise ArchStringError(f"unknown op {op!r} in {arch!r}; known ops: {', '.join(OPS)}")
            if src != source:
                raise ArchStringError(
                    f"edge {token!r} into node {target} in {arch!r} names source {src}, expected {source}"
                )
            encoding[edge] = _OP_INDEX[op]
            edge += 1
    return encoding


def format_arch(encoding) -> str:
    """Formats an encoding (sequence of 6 op indices) as the official arch string."""
    enc = validate_encoding(encoding)
    parts, edge = [], 0
    for target in range(1, NUM_NODES):
        tokens = []
        for source in range(target):
            tokens.append(f"{OPS[int(enc[edge])]}~{source}")
            edge += 1
        parts.append("|" + "|".join(tokens) + "|")
    return "+".join(parts)


def validate_encoding(encoding) -> np.ndarray:
    """Returns ``encoding`` as an int array of shape ``(6,)``, or raises ValueError."""
    enc = np.asarray(encoding)
    if enc.shape != (NUM_EDGES,):
        raise ValueError(f"an NB201 encoding has shape ({NUM_EDGES},), got {enc.shape}")
    if not np.issubdtype(enc.dtype, np.integer):
        raise ValueError(f"an NB201 encoding holds integers, got dtype {enc.dtype}")
    if enc.min() < 0 or enc.max() >= NUM_OPS:
        raise ValueError(f"NB201 op indices lie in [0, {NUM_OPS}), got {enc.tolist()}")
    return enc.astype(np.int32)


def encoding_to_code(encoding) -> jax.Array:
    """The base-5 code ``sum_e op_e 5**e`` of (a batch of) encodings; jittable."""
    powers = NUM_OPS ** jnp.arange(NUM_EDGES, dtype=jnp.int32)
    return jnp.sum(jnp.asarray(encoding, jnp.int32) * powers, axis=-1)


def code_to_encoding(code) -> jax.Array:
    """Inverse of :func:`encoding_to_code`; jittable, works on batches."""
    code = jnp.asarray(code, jnp.int32)[..., None]
    powers = NUM_OPS ** jnp.arange(NUM_EDGES, dtype=jnp.int32)
    return (code // powers) % NUM_OPS


def prune_dead_edges(encodings) -> np.ndarray:
    """Encodings ``(..., 6)`` with every edge that cannot change the cell's output set to ``none``.

    Two kinds of edge go, repeatedly until nothing changes (the result is a fixed point):

    * *dead* edges: the target is an intermediate node with no path of non-``none``
      edges to the output node 3, so the edge's output is never used;
    * skip and avg-pool edges out of an *exactly zero* node: a node whose every incoming
      edge is ``none``, or skip/avg-pool from an exactly zero node. They output exact
      zeros. Convolutions out of such a node are kept: ``conv(0) + bias`` is a constant,
      and BatchNorm maps it to zero only in exact arithmetic (in float32 the rounding
      of its mean survives, times ``1/sqrt(eps)``), and without BatchNorm (synflow's
      network) it is the bias itself.

    A pruned network computes the same function, bit for bit in float32, and every
    weight it drops has zero gradient; which proxies may score the pruned network in
    place of the original is ``Proxy.prunable`` in ``jnas.proxies``. 15,625 cells
    prune to 10,405 distinct ones.
    """
    enc = np.array(encodings, dtype=np.int32, copy=True)
    none = OPS.index("none")
    passes_zero = np.isin(np.arange(NUM_OPS), [OPS.index("skip_connect"), OPS.index("avg_pool_3x3")])
    while True:
        alive = enc != none  # (..., 6)
        reaches_out = {NUM_NODES - 1: np.ones(enc.shape[:-1], bool)}
        for node in range(NUM_NODES - 2, 0, -1):
            reaches_out[node] = np.zeros(enc.shape[:-1], bool)
            for e, (src, dst) in enumerate(EDGES):
                if src == node:
                    reaches_out[node] |= alive[..., e] & reaches_out[dst]
        zero = {0: np.zeros(enc.shape[:-1], bool)}
        for node in range(1, NUM_NODES):
            zero[node] = np.ones(enc.shape[:-1], bool)
            for e, (src, dst) in enumerate(EDGES):
                if dst == node:
                    zero[node] &= ~alive[..., e] | (passes_zero[enc[..., e]] & zero[src])
        keep = np.stack([reaches_out[dst] & ~(zero[src] & passes_zero[enc[..., e]]) for e, (src, dst) in enumerate(EDGES)], -1)
        pruned = np.where(keep, enc, none)
        if np.array_equal(pruned, enc):
            return enc
        enc = pruned


def all_encodings() -> np.ndarray:
    """All 15,625 encodings, shape ``(15625, 6)``, ordered by base-5 code."""
    return np.asarray(code_to_encoding(jnp.arange(NUM_ARCHS)))


def sample(key: jax.Array, shape: tuple[int, ...] = ()) -> jax.Array:
    """Uniformly random encodings of shape ``shape + (6,)``."""
    return jax.random.randint(key, shape + (NUM_EDGES,), 0, NUM_OPS, dtype=jnp.int32)


def mutate(key: jax.Array, encoding: jax.Array) -> jax.Array:
    """Changes the op of one uniformly chosen edge to a different op (jittable).

    This is the mutation of regularized evolution on NAS-Bench-201: the child always
    differs from its parent in exactly one edge.
    """
    encoding = jnp.asarray(encoding, jnp.int32)
    edge_key, op_key = jax.random.split(key)
    edge = jax.random.randint(edge_key, (), 0, NUM_EDGES)
    shift = jax.random.randint(op_key, (), 1, NUM_OPS)  # never 0: a different op
    new_op = (encoding[edge] + shift) % NUM_OPS
    return encoding.at[edge].set(new_op)


def one_hot(encoding) -> jax.Array:
    """Architecture weights of a discrete cell: one-hot codes, shape ``(..., 6, 5)``."""
    return jax.nn.one_hot(jnp.asarray(encoding, jnp.int32), NUM_OPS, dtype=jnp.float32)


def derive(arch_weights) -> np.ndarray:
    """The discrete cell of a DARTS search: argmax over ops on every edge.

    ``none`` competes like any other op, as in the NAS-Bench-201 reference code.
    """
    weights = np.asarray(arch_weights)
    if weights.shape != (NUM_EDGES, NUM_OPS):
        raise ValueError(f"arch weights have shape ({NUM_EDGES}, {NUM_OPS}), got {weights.shape}")
    return weights.argmax(axis=-1).astype(np.int32)
