"""The DARTS search network (NASNet-style cells), as pure functions over a parameter pytree.

Macro skeleton, as the DARTS reference ``model_search.py`` (and RobustDARTS', PC-DARTS'):

  stem: conv3x3(in -> 3C) + BN (affine)
  ``layers`` cells (8 in DARTS); reduction cells at ``layers // 3`` and ``2 * layers // 3``
  double the width and halve the resolution
  head: global average pool + linear

A cell takes the outputs of the two previous cells (the stem's output twice for the
first cell). Its inputs are preprocessed to C channels by ReLU-conv1x1-BN, or by a
factorized reduce when the previous cell was a reduction. Intermediate node ``2 + i``
sums a *mixed op* over every edge from an earlier node; a reduction cell's edges from
its input nodes have stride 2. The cell's output concatenates the 4 intermediate nodes
(4C channels). Search-time BatchNorms are not affine (the stem's is) and use the
statistics of the batch at hand; pools are followed by a BN, as in DARTS' MixedOp.

Architecture parameters: ``{"alpha": (2, 14, num_ops)}`` (normal, reduction cell),
plus ``{"beta": (2, 14)}`` with PC-DARTS edge normalization. ``apply`` applies the
softmaxes itself, so the same compiled function serves every α and ``jax.vmap`` over α
(params and images unbatched) evaluates many architectures on one batch.

* Masked spaces (RobustDARTS S1): disallowed ops get the logit :data:`MASKED_LOGIT`
  in :func:`op_logits` (softmax weight exactly 0) and are not computed at all.
* PC-DARTS (``partial_channels`` K > 1): on every edge only the first C/K channels go
  through the mixed op (whose ops are C/K wide); the rest bypass it (2x2 max-pooled on
  stride-2 edges), are concatenated back, and the channels are shuffled in K groups.
* Edge normalization: each edge's output is multiplied by softmax(β) over the edges
  entering its node; ``derive`` then ranks edges by op weight times edge weight.
* S4's ``noise`` op draws from a key: ``apply(..., key=k)``; without one, the key is
  derived from the batch's bits, so each batch gets its own noise and a step that sees
  the same batch twice (the unrolled second-order step) sees the same noise.

Speed on XLA CPU: every node (and cell output) goes through
:func:`jnas.supernet.nb201.materialize`, which stops XLA from re-fusing the growing
sums of a cell into the backward's layout copies (see its docstring).

References:
  Liu, Simonyan & Yang, "DARTS", ICLR 2019 (``cnn/model_search.py``).
  Xu et al., "PC-DARTS", ICLR 2020 (``model_search.py``).
  Zela et al., "Understanding and Robustifying DARTS", ICLR 2020 (``src/spaces.py``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jnas import prng
from jnas.spaces import darts as space
from jnas.supernet import darts_ops as dops
from jnas.supernet import ops as base_ops
from jnas.supernet.nb201 import materialize
from jnas.supernet.network import SearchNetwork

# Logit of an op an edge may not use (S1): softmax gives it exactly 0, and unlike -inf
# it never turns 0 * logit into NaN in a diagnostic.
MASKED_LOGIT = -1e9


@dataclasses.dataclass(frozen=True)
class DartsSupernetConfig:
    """Shape of the DARTS search network.

    Attributes:
      space: ``darts`` or a RobustDARTS space ``darts-s1`` .. ``darts-s4``.
      channels: C, the width of the first cells (16 in DARTS).
      layers: number of cells (8 in DARTS); reductions at ``layers//3``, ``2*layers//3``.
      num_classes: output classes.
      in_channels: image channels.
      image_size: image height = width.
      stem_multiplier: the stem has ``stem_multiplier * C`` channels (3).
    """

    space: str = "darts"
    channels: int = 16
    layers: int = 8
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    stem_multiplier: int = 3

    def __post_init__(self):
        space.get_space(self.space)  # raises on an unknown name
        for name in ("channels", "layers", "num_classes", "in_channels", "image_size", "stem_multiplier"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"DartsSupernetConfig.{name} must be a positive integer, got {value!r}")


def cell_plan(layers: int, channels: int, stem_multiplier: int = 3, multiplier: int = space.NUM_NODES):
    """Per cell: ``(reduction, reduction_prev, C_prev_prev, C_prev, C)``, as the reference builds them."""
    c_pp = c_p = stem_multiplier * channels
    c = channels
    plan = []
    reduction_prev = False
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            c *= 2
        plan.append((reduction, reduction_prev, c_pp, c_p, c))
        reduction_prev = reduction
        c_pp, c_p = c_p, multiplier * c
    return plan


def edge_softmax(beta):
    """PC-DARTS edge normalization: softmax of β over each node's incoming edges (last axis 14)."""
    return jnp.concatenate([jax.nn.softmax(beta[..., s], axis=-1) for s in space.NODE_EDGES], axis=-1)


def _search_bn(x, path):
    del path
    return base_ops.batch_norm(x)


class _Net:
    """The pieces :func:`search_network` closes over (static Python structure only).

    Program size decides compile time, so the edges leaving one node are computed
    together: parameter-free ops (pools + BN, identity) once per source node, each op
    with weights once per (source node, op) under ``jax.vmap`` over that op's stacked
    per-edge weights.
    """

    def __init__(self, config: DartsSupernetConfig, partial_channels: int, edge_normalization: bool):
        self.config = config
        self.space = space.get_space(config.space)
        self.ops = self.space.ops
        self.mask = self.space.mask()
        self.k = int(partial_channels)
        self.edge_normalization = bool(edge_normalization)
        self.plan = cell_plan(config.layers, config.channels, config.stem_multiplier)
        if self.k < 1:
            raise ValueError(f"partial_channels must be a positive integer, got {partial_channels!r}")
        for _, _, _, _, c in self.plan:
            if c % self.k:
                raise ValueError(f"partial_channels {self.k} must divide every cell width; {c} is not a multiple")
            if "skip_connect" in self.ops and (c // self.k) % 2:
                raise ValueError(f"factorized reduce needs an even mixed-op width; C/K = {c // self.k}")
        self.has_noise = space.NOISE in self.ops
        # Per cell type t: for every op index, the edges (EDGES order) that compute it,
        # and the edges whose copy of it owns weights (its rows in the stacked params).
        self.computed = []
        self.weighted = []
        for t in range(2):
            computed, weighted = {}, {}
            for o, name in enumerate(self.ops):
                if name == "none":
                    continue  # zero: contributes nothing
                edges = tuple(e for e in range(space.NUM_EDGES) if self.mask[t, e, o])
                if not edges:
                    continue
                computed[o] = edges
                rows = tuple(e for e in edges if dops.op_param_shapes(name, 2, _stride(t, e), affine=False))
                if rows:
                    weighted[o] = rows
            self.computed.append(computed)
            self.weighted.append(weighted)

    # -- parameters -----------------------------------------------------------------

    def groups(self, t: int, src: int):
        """The edges leaving node ``src`` in a cell of type ``t``, and per computed op
        ``(op index, weighted)``; ``weighted``: the op owns weights on these edges."""
        edges = _OUT_EDGES[src]
        ops = []
        for o, on in self.computed[t].items():
            mine = tuple(e for e in on if e in edges)
            if mine:
                ops.append((o, mine, mine[0] in self.weighted[t].get(o, ())))
        return edges, ops

    def param_shapes(self) -> dict[str, tuple[tuple[int, ...], int]]:
        cfg = self.config
        stem_c = cfg.stem_multiplier * cfg.channels
        shapes = {
            "stem.conv": ((3, 3, cfg.in_channels, stem_c), 9 * cfg.in_channels),
            "stem.bn.scale": ((stem_c,), 0),
            "stem.bn.bias": ((stem_c,), 0),
        }
        for i, (reduction, reduction_prev, c_pp, c_p, c) in enumerate(self.plan):
            pre = f"cells.{i}"
            if reduction_prev:
                shapes[f"{pre}.pre0.fr1"] = ((c_pp, c // 2), c_pp)
                shapes[f"{pre}.pre0.fr2"] = ((c_pp, c // 2), c_pp)
            else:
                shapes[f"{pre}.pre0.w"] = ((c_pp, c), c_pp)
            shapes[f"{pre}.pre1.w"] = ((c_p, c), c_p)
            t = int(reduction)
            for src in range(space.NUM_INPUTS + space.NUM_NODES - 1):
                _, ops = self.groups(t, src)
                for o, edges, weighted in ops:
                    if not weighted:
                        continue
                    name = self.ops[o]
                    op_shapes = dops.op_param_shapes(name, c // self.k, _stride(t, edges[0]), affine=False)
                    for suffix, (shape, fan_in) in op_shapes.items():
                        # leading axis: this source's edges that use the op, in EDGES order
                        shapes[f"{pre}.n{src}.{name}.{suffix}"] = ((len(edges), *shape), fan_in)
        last = space.NUM_NODES * self.plan[-1][4]
        shapes["head.w"] = ((last, cfg.num_classes), last)
        shapes["head.b"] = ((cfg.num_classes,), last)
        return shapes

    def init(self, key):
        """PyTorch's default init (U(±1/sqrt(fan_in)), BN scale 1, bias 0), from one draw."""
        shapes = self.param_shapes()
        return dops.init_params(key, shapes)

    def init_arch(self, key):
        alpha_key, beta_key = jax.random.split(key)
        arch = {"alpha": 1e-3 * prng.normal(alpha_key, (2, space.NUM_EDGES, len(self.ops)))}
        if self.edge_normalization:
            arch["beta"] = 1e-3 * jax.random.normal(beta_key, (2, space.NUM_EDGES))
        return arch

    def op_logits(self, arch_params):
        alpha = arch_params["alpha"]
        if self.mask.all():
            return alpha
        return jnp.where(jnp.asarray(self.mask), alpha, jnp.asarray(MASKED_LOGIT, alpha.dtype))

    # -- forward --------------------------------------------------------------------

    def source_weights(self, arch_params):
        """Per (cell type, source node): the ``(edges, computed ops)`` mixing weights,
        edge normalization folded in. Computed once per forward, shared by all cells."""
        weights = jax.nn.softmax(self.op_logits(arch_params), axis=-1)
        if self.edge_normalization:
            weights = weights * edge_softmax(arch_params["beta"])[..., None]
        # one gather into source-major edge order, then contiguous slices
        by_source = weights[:, _SOURCE_MAJOR]
        out = {}
        for t in range(2):
            for src in range(space.NUM_INPUTS + space.NUM_NODES - 1):
                _, ops = self.groups(t, src)
                lo = _SOURCE_START[src]
                block = by_source[t, lo : lo + len(_OUT_EDGES[src])]
                out[t, src] = block[:, np.asarray([o for o, _, _ in ops], np.int32)] if ops else None
        return out

    def source_edges(self, params, i, t, src, x, mixing, key):
        """The mixed-op outputs of every edge leaving node ``src``, stacked ``(E, B, H', W', C)``."""
        pre = f"cells.{i}"
        out_edges, ops = self.groups(t, src)
        stride = _stride(t, out_edges[0])
        if self.k > 1:
            c = x.shape[-1]
            x_part, x_bypass = x[..., : c // self.k], x[..., c // self.k :]
        else:
            x_part = x
        n = len(out_edges)
        stacked = []  # per computed op: (E, B, H', W', C)
        for o, edges, weighted in ops:
            name = self.ops[o]
            if weighted:
                prefix = f"{pre}.n{src}.{name}."
                op_params = {f"op.{k[len(prefix):]}": v for k, v in params.items() if k.startswith(prefix)}

                def run(p, name=name):
                    return dops.apply_op(name, x_part, stride, p, "op", _search_bn, pool_bn=True)

                ys = jax.vmap(run)(op_params)
            elif name == space.NOISE:
                keys = jax.vmap(lambda e: jax.random.fold_in(key, e))(jnp.asarray(edges))
                ys = jax.vmap(lambda k: dops.apply_op(name, x_part, stride, params, "", _search_bn, key=k))(keys)
            else:  # parameter-free and deterministic: computed once, shared by the edges
                y = dops.apply_op(name, x_part, stride, params, "", _search_bn, pool_bn=True)
                ys = jnp.broadcast_to(y, (len(edges), *y.shape))
            if len(edges) < n:  # S1: the op is on some of the edges only; its weight is 0 elsewhere
                rows = {e: r for r, e in enumerate(edges)}
                zero = jnp.zeros_like(ys[0])
                ys = jnp.stack([ys[rows[e]] if e in rows else zero for e in out_edges])
            stacked.append(ys)
        if stacked:
            out = jnp.einsum("oebhwc,eo->ebhwc", jnp.stack(stacked), mixing)
        else:  # only 'none' leaves this node
            out = jnp.zeros((n, *x_part[:, ::stride, ::stride].shape), x.dtype)
        if self.k > 1:
            bypass = dops.max_pool_2x2(x_bypass) if stride > 1 else x_bypass
            bypass = jnp.broadcast_to(bypass, (n, *bypass.shape))
            out = dops.channel_shuffle(jnp.concatenate([out, bypass], axis=-1), self.k)
        return out

    def cell(self, params, i, s0, s1, mixing, key):
        reduction, reduction_prev, _, _, _ = self.plan[i]
        pre = f"cells.{i}"
        if reduction_prev:
            s0 = dops.factorized_reduce(s0, params[f"{pre}.pre0.fr1"], params[f"{pre}.pre0.fr2"], _search_bn, "")
        else:
            s0 = dops.relu_conv_bn(s0, params[f"{pre}.pre0.w"], _search_bn, "")
        s1 = dops.relu_conv_bn(s1, params[f"{pre}.pre1.w"], _search_bn, "")
        t = int(reduction)
        states = [materialize(s0), materialize(s1)]
        from_source = {}
        cell_key = jax.random.fold_in(key, i)
        for node, edges in enumerate(space.NODE_EDGES):
            newest = len(states) - 1
            for src in (range(newest + 1) if node == 0 else (newest,)):
                from_source[src] = self.source_edges(params, i, t, src, states[src], mixing[t, src], cell_key)
            total = None
            for e in range(edges.start, edges.stop):
                src = space.EDGES[e][0]
                y = from_source[src][_OUT_EDGES[src].index(e)]
                total = y if total is None else total + y
            states.append(materialize(total))
        return jnp.concatenate(states[space.NUM_INPUTS :], axis=-1)

    def apply(self, params, images, arch_params, key=None):
        mixing = self.source_weights(arch_params)
        if key is None:
            key = jax.random.key(0)
            if self.has_noise:
                bits = jax.lax.bitcast_convert_type(jnp.sum(jax.lax.stop_gradient(images)), jnp.uint32)
                key = jax.random.fold_in(key, bits)
        x = base_ops.batch_norm(base_ops.conv2d(images, params["stem.conv"], 1, 1),
                                params["stem.bn.scale"], params["stem.bn.bias"])
        s0 = s1 = x
        for i in range(len(self.plan)):
            s0, s1 = s1, self.cell(params, i, s0, s1, mixing, key)
        feats = jnp.mean(s1, axis=(1, 2))
        return feats @ params["head.w"] + params["head.b"]

    def arch_weights(self, arch_params):
        """Host-side op weights used by ``derive``: softmax(α), times the edge weights with β."""
        alpha = np.asarray(jax.device_get(arch_params["alpha"]), np.float64)
        if alpha.shape != (2, space.NUM_EDGES, len(self.ops)):
            raise ValueError(f"alpha must have shape (2, {space.NUM_EDGES}, {len(self.ops)}), got {alpha.shape}")
        alpha = np.where(self.mask, alpha, -np.inf)
        w = np.exp(alpha - alpha.max(axis=-1, keepdims=True))
        w /= w.sum(axis=-1, keepdims=True)
        if self.edge_normalization and "beta" in arch_params:
            beta = np.asarray(jax.device_get(arch_params["beta"]), np.float64)
            ew = np.empty_like(beta)
            for s in space.NODE_EDGES:
                z = np.exp(beta[:, s] - beta[:, s].max(-1, keepdims=True))
                ew[:, s] = z / z.sum(-1, keepdims=True)
            w = w * ew[..., None]
        return w

    def derive(self, arch_params) -> str:
        w = self.arch_weights(arch_params)
        return space.format_genotype(space.derive(w[0], w[1], self.ops, self.mask))


# For every node that feeds intermediate nodes: the edges leaving it (EDGES order); the
# permutation of EDGES that lists them source by source, and where each source starts.
_OUT_EDGES = tuple(
    tuple(e for e, (s, _) in enumerate(space.EDGES) if s == src)
    for src in range(space.NUM_INPUTS + space.NUM_NODES - 1)
)
_SOURCE_MAJOR = np.asarray([e for edges in _OUT_EDGES for e in edges], np.int32)
_SOURCE_START = tuple(int(x) for x in np.cumsum([0] + [len(edges) for edges in _OUT_EDGES])[:-1])


def _stride(t: int, edge: int) -> int:
    """Stride of ``edge`` in a cell of type ``t`` (1: reduction): 2 on a reduction cell's input edges."""
    return 2 if t == 1 and space.EDGES[edge][0] < space.NUM_INPUTS else 1


def search_network(config: DartsSupernetConfig, partial_channels: int = 1, edge_normalization: bool = False) -> SearchNetwork:
    """The DARTS search network as a :class:`jnas.supernet.network.SearchNetwork`.

    Args:
      config: the network's shape and its space (``darts``, ``darts-s1`` .. ``darts-s4``).
      partial_channels: PC-DARTS' K (1: plain DARTS). K must divide every cell width.
      edge_normalization: PC-DARTS' per-edge β.

    Returns:
      ``SearchNetwork(init, init_arch, apply, op_logits, ops, derive)``; ``apply`` also
      takes an optional ``key=`` for S4's noise op.
    """
    net = _Net(config, partial_channels, edge_normalization)
    return SearchNetwork(
        init=net.init,
        init_arch=net.init_arch,
        apply=net.apply,
        op_logits=net.op_logits,
        ops=net.ops,
        derive=net.derive,
    )


def count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
