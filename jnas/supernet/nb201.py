"""The NAS-Bench-201 search network (supernet), as a pure function of a parameter pytree.

Macro skeleton, exactly as NAS-Bench-201 defines it (Dong & Yang, ICLR 2020; the
reference ``TinyNetworkDarts`` of xautodl):

  stem: conv3x3(in -> C) + BN
  stage 1: N search cells at C      | residual reduction block C -> 2C (stride 2)
  stage 2: N search cells at 2C     | residual reduction block 2C -> 4C
  stage 3: N search cells at 4C
  head: BN + ReLU + global average pool + linear

A search cell has 4 nodes; node ``j`` is the sum over ``i < j`` of the mixed op on
edge ``i -> j`` applied to node ``i``. The mixed op is the architecture-weighted sum
of ``none`` (zero), ``skip_connect``, ReLU-conv1x1-BN, ReLU-conv3x3-BN and 3x3 average
pooling. Cell BatchNorms have no affine parameters and no running statistics, as in
the reference search code; the stem, reduction blocks and head keep their affine BN
(the reference's defaults). All BatchNorms use the statistics of the batch at hand.
The reference's cell convolutions carry a bias when BN is not affine; a bias before a
batch-statistics BN cancels exactly, so it is left out here.

The architecture enters as an array ``arch_weights`` of shape ``(6, 5)``: softmax(α)
for DARTS, one-hot codes for a discrete cell (plus, for PC-DARTS's edge
normalization, per-edge weights ``edge_weights`` of shape ``(6,)``). The same compiled function therefore
serves every architecture, and ``jax.vmap`` over ``arch_weights`` evaluates many
architectures on one batch with shared weights.

Speed (XLA CPU, see ``experiments/bench_step``): a cell computes, for each source
node, ONE 3x3 and ONE 1x1 convolution covering all of that node's outgoing edges
(BN is per channel, so normalising the concatenated channels is exact), and every
node output goes through :func:`materialize`. The identical cells of a stage can run
under ``lax.scan`` over stacked parameters (``scan_cells``), so compile time does not
grow with N; unrolled is the default because it runs faster.

PC-DARTS (Xu et al., ICLR 2020; ``partial_channels`` K > 1): on every edge only the
first C/K channels of the source node go through the mixed op, the other channels
bypass it, the two parts are concatenated and channel-shuffled with K groups. The
shuffle is a fixed permutation, so the sum over a node's incoming edges is shuffled
once per node -- folded into :func:`materialize`, whose identity becomes the
permutation matrix. Edge normalization multiplies each edge's whole output (mixed
part and bypass) by its weight in ``edge_weights``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from jnas import prng
from jnas.spaces import nb201 as space
from jnas.supernet import ops

# For every source node: the edges leaving it, in space.EDGES order.
_OUT_EDGES = tuple(tuple(e for e, (s, _) in enumerate(space.EDGES) if s == i) for i in range(space.NUM_NODES - 1))
_SKIP, _CONV1, _CONV3, _POOL = (space.OPS.index(n) for n in ("skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"))


@dataclasses.dataclass(frozen=True)
class SupernetConfig:
    """Shape of the search network.

    Attributes:
      channels: C, the width of the first stage (16 in NAS-Bench-201).
      cells: N, search cells per stage (5 in NAS-Bench-201).
      num_classes: output classes.
      in_channels: image channels (1 or 3).
      image_size: image height = width (e.g. 28 or 32; 8 for the digits demo).
      scan_cells: run each stage's identical cells under ``lax.scan``: the DARTS step
        compiles faster and runs slower (the loop stacks every residual). Measured on the
        2-core CPU in one run (README, Speed): 13.7 / 13.2 s compile at order 1 / 2 instead
        of 20.4 / 21.1 s unrolled, 2.66 / 6.19 s per step instead of 1.86 / 4.70 s.
      partial_channels: PC-DARTS's K: a 1/K slice of channels goes through the cell ops
        (1: plain DARTS). Must divide ``channels``.
    """

    channels: int = 16
    cells: int = 5
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    scan_cells: bool = False
    partial_channels: int = 1

    def __post_init__(self):
        for name in ("channels", "cells", "num_classes", "in_channels", "image_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SupernetConfig.{name} must be a positive integer, got {value!r}")
        k = self.partial_channels
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0 or self.channels % k:
            raise ValueError(
                f"partial_channels must be a positive divisor of channels={self.channels}, got {k!r}"
            )
        if self.image_size < 4:
            raise ValueError(f"image_size must be at least 4 (two stride-2 reductions), got {self.image_size}")


def materialize(x, matrix=None):
    """Identity that XLA must materialise: a GEMM with the identity matrix.

    XLA's CPU fusion duplicates cheap elementwise producers into every consumer.
    In a cell, skip paths make each node an elementwise sum of everything before it,
    and XLA fused those growing chains into the layout-changing copies of the
    backward pass, recomputing them there: the backward grew superlinearly with
    depth (56 s vs 0.75 s for 5 vs 1 cell, measured). A dot is never fused into its
    consumers, and its transpose (in the backward) is again a dot, so both the node
    and its gradient become materialised buffers. Cost: one C x C GEMM per node.
    ``matrix`` replaces the identity (a channel permutation, for PC-DARTS's shuffle).
    """
    if matrix is None:
        matrix = jnp.eye(x.shape[-1], dtype=x.dtype)
    return jnp.einsum("...c,cd->...d", x, matrix.astype(x.dtype))


def shuffle_matrix(channels: int, groups: int) -> np.ndarray:
    """``x @ P`` is PC-DARTS's ``channel_shuffle(x, groups)``.

    Channels viewed as ``(groups, channels // groups)`` are transposed: input channel
    ``g * (channels // groups) + c`` lands on output channel ``c * groups + g``.
    """
    per = channels // groups
    matrix = np.zeros((channels, channels), np.float32)
    for g in range(groups):
        for c in range(per):
            matrix[g * per + c, c * groups + g] = 1.0
    return matrix


def _uniform(key, shape, fan_in, dtype=jnp.float32):
    """PyTorch's default conv/linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return prng.uniform(key, shape, dtype, -bound, bound)


@functools.partial(jax.jit, static_argnums=1)
def init(key: jax.Array, config: SupernetConfig) -> dict:
    """Initial weights of the supernet (a pytree of float32 arrays).

    Cell weights of a stage are stacked along a leading axis of size ``cells``:
    ``w1`` ``(N, 6, C, C)`` holds the 1x1 kernels and ``w3`` ``(N, 6, 3, 3, C, C)`` the
    3x3 kernels of the six edges.
    """
    c, n, k = config.channels, config.cells, config.partial_channels
    keys = iter(jax.random.split(key, 64))
    params = {
        "stem": {
            "w": _uniform(next(keys), (3, 3, config.in_channels, c), 9 * config.in_channels),
            "scale": jnp.ones((c,)),
            "bias": jnp.zeros((c,)),
        },
        "stages": [],
        "reductions": [],
    }
    widths = (c, 2 * c, 4 * c)
    for s, width in enumerate(widths):
        part = width // k
        params["stages"].append(
            {
                "w1": _uniform(next(keys), (n, space.NUM_EDGES, part, part), part),
                "w3": _uniform(next(keys), (n, space.NUM_EDGES, 3, 3, part, part), 9 * part),
            }
        )
        if s + 1 < len(widths):
            out = widths[s + 1]
            params["reductions"].append(
                {
                    "conv_a": _uniform(next(keys), (3, 3, width, out), 9 * width),
                    "scale_a": jnp.ones((out,)),
                    "bias_a": jnp.zeros((out,)),
                    "conv_b": _uniform(next(keys), (3, 3, out, out), 9 * out),
                    "scale_b": jnp.ones((out,)),
                    "bias_b": jnp.zeros((out,)),
                    "shortcut": _uniform(next(keys), (1, 1, width, out), width),
                }
            )
    last = widths[-1]
    params["head"] = {
        "scale": jnp.ones((last,)),
        "bias": jnp.zeros((last,)),
        "w": _uniform(next(keys), (last, config.num_classes), last),
        "b": _uniform(next(keys), (config.num_classes,), last),
    }
    return params


def init_arch_params(key: jax.Array) -> jax.Array:
    """DARTS architecture parameters α, shape ``(6, 5)``, as ``1e-3 * N(0, 1)`` (reference init)."""
    return 1e-3 * prng.normal(key, (space.NUM_EDGES, space.NUM_OPS))


def edge_softmax(beta: jax.Array) -> jax.Array:
    """PC-DARTS edge normalization: softmax of ``beta`` ``(..., 6)`` over each node's incoming edges."""
    out = jnp.zeros_like(beta)
    for node in range(1, space.NUM_NODES):
        idx = np.asarray([e for e, (_, dst) in enumerate(space.EDGES) if dst == node])
        out = out.at[..., idx].set(jax.nn.softmax(beta[..., idx], axis=-1))
    return out


def mixing_weights(arch_weights, part: int, edge_weights=None):
    """What the cells of a stage read of the architecture, extracted once per stage.

    For each source node (in ``_OUT_EDGES`` order): the BN scales of its 3x3 and 1x1
    convolutions (each outgoing edge's op weight repeated over its ``part`` channels),
    and per outgoing edge the ``skip_connect`` and ``avg_pool_3x3`` weights and, with
    PC-DARTS's edge normalization, the edge weight. Static slices only (``lax``), no
    fancy indexing: tracing is a large part of compile time.
    """
    col = lambda o: lax.index_in_dim(arch_weights, o, axis=-1, keepdims=False)  # (6,)
    skip, conv1, conv3, pool = col(_SKIP), col(_CONV1), col(_CONV3), col(_POOL)
    pick = lambda v, e: lax.index_in_dim(v, e, axis=-1, keepdims=False)
    rows = lambda v, edges: jnp.concatenate([lax.slice_in_dim(v, e, e + 1, axis=-1) for e in edges], axis=-1)
    nodes = []
    for out_edges in _OUT_EDGES:
        edges = [(pick(skip, e), pick(pool, e), None if edge_weights is None else pick(edge_weights, e))
                 for e in out_edges]
        nodes.append((jnp.repeat(rows(conv3, out_edges), part), jnp.repeat(rows(conv1, out_edges), part), edges))
    return nodes


def cell(w1, w3, h0, arch_weights, edge_weights=None, mixing=None):
    """One search cell.

    Args:
      w1: ``(6, P, P)`` 1x1 kernels of the six edges (``P = C / K``, K the PC-DARTS
        partial-channel factor, read from the kernel shape; K = 1 is plain DARTS).
      w3: ``(6, 3, 3, P, P)`` 3x3 kernels.
      h0: ``(B, H, W, C)`` cell input.
      arch_weights: ``(6, 5)`` weights of the ops on every edge (``none`` ignored: it is zero).
      edge_weights: optional ``(6,)`` PC-DARTS edge-normalization weights.
      mixing: :func:`mixing_weights` of ``arch_weights`` (computed here if not given;
        a stage computes it once for all of its cells).

    Returns:
      ``(B, H, W, C)``, node 3.
    """
    c = h0.shape[-1]
    p = w1.shape[-1]
    partial = p != c
    if mixing is None:
        mixing = mixing_weights(arch_weights, p, edge_weights)
    channels = lambda x, lo, hi: lax.slice_in_dim(x, lo, hi, axis=-1)
    nodes = [h0]
    incoming = {j: [] for j in range(1, space.NUM_NODES)}
    bypass = {j: [] for j in range(1, space.NUM_NODES)}
    for i, out_edges in enumerate(_OUT_EDGES):
        h = nodes[i]
        hp = channels(h, 0, p) if partial else h
        r = jax.nn.relu(hp)
        # one convolution per source node covering all of its outgoing edges: kernels
        # side by side along the output channels (slot s = edge out_edges[s])
        k3 = jnp.concatenate([lax.index_in_dim(w3, e, keepdims=False) for e in out_edges], axis=-1)
        k1 = jnp.concatenate([lax.index_in_dim(w1, e, keepdims=False) for e in out_edges], axis=-1)[None, None]
        # The conv ops' architecture weights are the BN's per-channel scale (each edge's
        # weight repeated over its slot): the gradient of a weight is then the BN's
        # scale gradient, one of the channel sums its backward forms anyway, instead of
        # a separate reduction over a materialised normalised slot.
        a3, a1, edge_mix = mixing[i]
        no_bias = jnp.zeros_like(a3)
        y3 = ops.batch_norm(ops.conv2d(r, k3, 1, 1), a3, no_bias)
        y1 = ops.batch_norm(ops.conv2d(r, k1, 1, 0), a1, no_bias)
        pooled = ops.avg_pool_3x3(hp)
        for slot, (edge, (a_skip, a_pool, a_edge)) in enumerate(zip(out_edges, edge_mix)):
            term = (
                a_skip * hp
                + channels(y1, slot * p, (slot + 1) * p)
                + channels(y3, slot * p, (slot + 1) * p)
                + a_pool * pooled
            )
            rest = channels(h, p, c) if partial else None
            if a_edge is not None:
                term = a_edge * term
                rest = a_edge * rest if partial else None
            dst = space.EDGES[edge][1]
            incoming[dst].append(term)
            bypass[dst].append(rest)
        node = sum(incoming[i + 1])
        if partial:
            node = jnp.concatenate([node, sum(bypass[i + 1])], axis=-1)
            nodes.append(materialize(node, jnp.asarray(shuffle_matrix(c, c // p))))
        else:
            nodes.append(materialize(node))
    return nodes[-1]


def _relu_conv_bn(x, w, scale, bias, stride, padding):
    return ops.batch_norm(ops.conv2d(jax.nn.relu(x), w, stride, padding), scale, bias)


def reduction_block(p, x):
    """NAS-Bench-201's residual reduction block (ResNet basic block, stride 2)."""
    y = _relu_conv_bn(x, p["conv_a"], p["scale_a"], p["bias_a"], 2, 1)
    y = _relu_conv_bn(y, p["conv_b"], p["scale_b"], p["bias_b"], 1, 1)
    shortcut = ops.conv2d(ops.avg_pool_2x2(x), p["shortcut"], 1, 0)
    return materialize(shortcut + y)


def _stage(stage_params, x, arch_weights, scan: bool, edge_weights=None):
    w1s, w3s = stage_params["w1"], stage_params["w3"]
    mixing = mixing_weights(arch_weights, w1s.shape[-1], edge_weights)
    if scan:
        def body(h, ws):
            return cell(ws[0], ws[1], h, arch_weights, edge_weights, mixing), None

        x, _ = jax.lax.scan(body, x, (w1s, w3s))
        return x
    for k in range(w1s.shape[0]):
        x = cell(lax.index_in_dim(w1s, k, keepdims=False), lax.index_in_dim(w3s, k, keepdims=False), x,
                 arch_weights, edge_weights, mixing)
    return x


def features(params, images, arch_weights, config: SupernetConfig, edge_weights=None):
    """Pooled features ``(B, 4C)`` before the classifier."""
    stem = params["stem"]
    x = ops.batch_norm(ops.conv2d(images, stem["w"], 1, 1), stem["scale"], stem["bias"])
    for s, stage_params in enumerate(params["stages"]):
        x = _stage(stage_params, x, arch_weights, config.scan_cells, edge_weights)
        if s < len(params["reductions"]):
            x = reduction_block(params["reductions"][s], x)
    head = params["head"]
    x = jax.nn.relu(ops.batch_norm(x, head["scale"], head["bias"]))
    return jnp.mean(x, axis=(1, 2))


def apply(params, images, arch_weights, config: SupernetConfig, edge_weights=None):
    """Logits ``(B, num_classes)`` of the supernet on ``images`` ``(B, H, W, C_in)``.

    ``arch_weights`` is ``(6, 5)``; vmap over a leading axis of it (with ``params`` and
    ``images`` unbatched) to evaluate many architectures with shared weights.
    ``edge_weights`` ``(6,)``: PC-DARTS edge normalization (default: none).
    """
    feats = features(params, images, arch_weights, config, edge_weights)
    return feats @ params["head"]["w"] + params["head"]["b"]


def count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def search_network(config: SupernetConfig, edge_normalization: bool = False):
    """The NAS-Bench-201 supernet as a :class:`jnas.supernet.network.SearchNetwork`.

    ``arch_params`` is ``{"alpha": (6, 5)}``, plus ``{"beta": (6,)}`` with PC-DARTS edge
    normalization (its derived cell weighs each edge's op weights by the edge's weight;
    in this space every node keeps all of its incoming edges, so only α decides).
    """
    from jnas.supernet.network import SearchNetwork

    def init_arch(key):
        alpha_key, beta_key = jax.random.split(key)
        arch = {"alpha": init_arch_params(alpha_key)}
        if edge_normalization:
            arch["beta"] = 1e-3 * jax.random.normal(beta_key, (space.NUM_EDGES,))
        return arch

    def apply_arch(params, images, arch_params):
        weights = jax.nn.softmax(arch_params["alpha"], axis=-1)
        edge_weights = edge_softmax(arch_params["beta"]) if "beta" in arch_params else None
        return apply(params, images, weights, config, edge_weights)

    def derive(arch_params):
        weights = np.asarray(jax.nn.softmax(jnp.asarray(arch_params["alpha"]), axis=-1))
        return space.format_arch(space.derive(weights))

    return SearchNetwork(
        init=lambda key: init(key, config),
        init_arch=init_arch,
        apply=apply_arch,
        op_logits=lambda arch_params: arch_params["alpha"],
        ops=tuple(space.OPS),
        derive=derive,
        gated_filter_gradients=True,
    )
