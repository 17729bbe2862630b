"""NAS-Bench-201 networks for many architectures at once, computing only the chosen ops.

Zero-cost proxies score each architecture as a *stand-alone discrete network*; the
supernet (``jnas.supernet.nb201``) computes all five ops on every edge, five times the
arithmetic of an average discrete cell. This module evaluates a batch of ``A``
architectures (encodings ``(A, 6)``, arrays, so one compiled function serves every
architecture) with an explicit architecture axis on every activation, ``(A, B, H, W, C)``:

* on each edge, the architectures are gathered into four groups of ``capacity`` slots,
  one per op other than ``none`` (``jnp.nonzero(op == o, size=capacity)``); each group
  gets only its op (the conv groups that edge's kernel), and every architecture's result
  is gathered back from its slot (``none``'s architectures read zeros: they need no
  slot). Both gathers have gathers as transposes (:func:`to_slots`, :func:`from_slots`),
  never scatter-adds. With ``capacity = A / 5`` (what the balanced chunks of
  ``jnas.proxies.batched`` give) no unchosen op is computed at all;
* every weight layer's output passes through a :class:`Tape`, which can add a zero
  *probe* to it: the gradient with respect to the probe is the layer's output gradient
  for every architecture slot separately, so per-architecture weight gradients
  ``dW_a = patches(x_a)^T g_a`` are formed afterwards (:func:`slot_weight_grad`) and an
  architecture never receives gradient from another one's use of a shared kernel;
* BatchNorm statistics are per architecture (over its own ``B, H, W``).

Parameters are :func:`init_params`: the supernet's pytree (``jnas.supernet.nb201.init``)
plus the cell convolutions' biases ``b1`` ``(N, 6, C)`` and ``b3`` ``(N, 6, C)``: the
reference networks of the zero-cost-proxy paper build cell convolutions with
``bias=not affine`` (cells are non-affine), and the bias matters once BatchNorm is removed
(synflow) or for per-sample statistics (fisher).

Two variants (``variant``):

``"bn"``: the network as trained by NAS-Bench-201: stem conv+BN; cells of
  ReLU-conv(+bias)-BN(non-affine), skip, avg-pool, zero; residual reduction blocks with
  affine BN; head BN+ReLU, global average pool, linear. BN uses batch statistics.
``"synflow"``: the copy that synflow scores (``get_prunable_copy(bn=False)`` of the
  zero-cost-nas NB201 models): the stem, cell and head BatchNorms are removed, but the
  two reduction blocks keep theirs (their ``reduction`` module takes no ``use_bn``
  flag). Values grow like a product over 17 layers (published synflow values span
  1e32..1e61), so this variant runs in *exactly rescaled* float32: after every cell the
  activations of each architecture are divided by their maximum ``m`` (held constant,
  ``stop_gradient``) and ``log S += log m``. Every later op is positively homogeneous
  once the rescaling is folded into it: a bias ``b`` becomes ``b / S``, the reduction's
  first BN (scale invariant) uses ``eps / S^2``, its branch is added as ``branch / S``.
  Then ``R_true(θ) = S R_stored(θ)`` for every θ near the current one, so gradients are
  ``S`` times the stored ones; the log-scale ``log S`` is returned per architecture.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jnas import prng
from jnas.spaces import nb201 as space
from jnas.supernet import nb201 as supernet
from jnas.supernet import ops

SKIP, CONV1, CONV3, POOL = (space.OPS.index(n) for n in ("skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"))
OUT_EDGES = tuple(tuple(e for e, (s, _) in enumerate(space.EDGES) if s == i) for i in range(space.NUM_NODES - 1))
VARIANTS = ("bn", "synflow")
_DN = ("NHWC", "HWIO", "NHWC")


def init_params(key: jax.Array, config: supernet.SupernetConfig) -> dict:
    """Supernet weights plus cell-convolution biases, PyTorch's default init throughout.

    Conv and linear weights and biases are ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (the
    init of the reference PyTorch networks), BN scales 1 and shifts 0.
    """
    net_key, bias_key = jax.random.split(key)
    params = supernet.init(net_key, config)
    stages = []
    for s, stage in enumerate(params["stages"]):
        width = stage["w1"].shape[-1]
        k1, k3 = jax.random.split(jax.random.fold_in(bias_key, s))
        shape = (config.cells, space.NUM_EDGES, width)
        b1 = prng.uniform(k1, shape, jnp.float32, -1.0, 1.0) / math.sqrt(width)
        b3 = prng.uniform(k3, shape, jnp.float32, -1.0, 1.0) / math.sqrt(9 * width)
        stages.append({**stage, "b1": b1, "b3": b3})
    return {**params, "stages": stages}


def is_weight_path(path) -> bool:
    """Whether a params leaf is a conv/linear *weight* (what the proxies score), not a bias or BN param."""
    name = path[-1].key if hasattr(path[-1], "key") else str(path[-1])
    return name in ("w", "w1", "w3", "conv_a", "conv_b", "shortcut")


def weight_mask(params):
    """Pytree of Python bools: True on conv/linear weights."""
    return jax.tree_util.tree_map_with_path(lambda p, _: is_weight_path(p), params)


@dataclasses.dataclass(frozen=True)
class LayerMeta:
    """Static description of one recorded weight layer."""

    kind: str  # "conv" or "linear"
    kernel: int
    stride: int
    padding: int
    cell: bool = False  # a cell convolution (gathered slots, with bias)
    stacked: bool = False  # record arrays carry a leading axis over the cells of a stage


class Tape:
    """Records every weight layer's input, output and slot->architecture index.

    With ``probes`` (a list of arrays, one per layer in call order) each output gets its
    probe added, so ``grad`` w.r.t. the probes is every slot's output gradient.
    ``codes`` (when set) collects NASWOT's binary ReLU codes per architecture.
    """

    def __init__(self, probes=None, collect_codes: bool = False, weight_scale=None, forward_mode: bool = False):
        self.probes = probes
        self.forward_mode = forward_mode  # plain gathers (jvp-able) instead of the custom-VJP ones
        self.weight_scale = weight_scale  # (A,): arch a's weights act as θ·(1 + t_a) (for θ·∇ per arch)
        self.meta: list[LayerMeta] = []
        self.records: list[dict] = []
        self.collect_codes = collect_codes
        self.kernels = []  # (A, B, B) Hamming-kernel contributions
        self.bn_stds = []  # (log RMS batch std (K,), slots (K,)) of every BN (Zen-score)

    def layer(self, y, x, w, slots, meta: LayerMeta, bias=None):
        """``y`` is the layer's output without bias; returns it scaled, biased and probed."""
        i = len(self.records)
        self.meta.append(meta)
        if self.weight_scale is not None:
            y = y * (1.0 + _bcast(self.weight_scale.at[slots].get(mode="fill", fill_value=0), y))
        if bias is not None:
            y = y + bias
        self.records.append({"x": x, "y": y, "w": w, "slots": slots, "b": 0.0 if bias is None else bias})
        if self.probes is not None:
            y = y + self.probes[i]
        return y

    def relu_code(self, pre, multiplicity=None):
        """NASWOT: adds ``c c^T + (1-c)(1-c)^T`` of the ReLU input's sign pattern, per architecture."""
        if not self.collect_codes:
            return
        gram = hamming_kernel(pre)
        if multiplicity is not None:
            gram = gram * multiplicity[:, None, None]
        self.kernels.append(gram)


def hamming_kernel(pre):
    """``(A, B, B)``: ``c c^T + (1-c)(1-c)^T`` of the codes ``c = pre > 0`` of each architecture.

    Computed as ``(s s^T + D) / 2`` with signs ``s = ±1`` (exact in float32) by
    :func:`per_arch_gram` (the batched product it replaced was 38 % of nwot's time).
    """
    depth = math.prod(pre.shape[2:])
    return (per_arch_gram(pre, lambda x: jnp.where(x > 0, 1.0, -1.0)) + depth) * 0.5


def per_arch_gram(x, transform=None):
    """``(A, B, B)``: ``f_a f_a^T`` with ``f_a = transform(x[a])`` flattened to ``(B, D)``.

    One plain ``(B, D) x (D, B)`` product per architecture under ``lax.map``: XLA's CPU
    batched ``dot_general`` with this shape (small output, long contraction) ran 6.6x
    slower (112 vs 17 ms at A=125, B=16, D=16384, measured 2026-11-26).
    """
    b = x.shape[1]

    def one(xa):
        f = xa if transform is None else transform(xa)
        f = f.reshape(b, -1)
        return lax.dot_general(f, f, (((1,), (1,)), ((), ())))

    return one(x[0])[None] if x.shape[0] == 1 else lax.map(one, x)


def _conv(x, w, stride, padding):
    lead = x.shape[:-3]
    y = lax.conv_general_dilated(
        x.reshape((-1,) + x.shape[-3:]), w, (stride, stride), ((padding, padding), (padding, padding)), dimension_numbers=_DN
    )
    return y.reshape(lead + y.shape[1:])


def _bn(x, scale=None, bias=None, eps=ops.BN_EPS, tape=None, slots=None):
    """BatchNorm with each architecture's own batch statistics (axes B, H, W)."""
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    centered = x - mean
    var = jnp.mean(jnp.square(centered), axis=(1, 2, 3), keepdims=True)
    if tape is not None:
        tape.bn_stds.append((0.5 * jnp.log(jnp.mean(var, axis=(1, 2, 3, 4))), slots))
    y = centered * lax.rsqrt(var + eps)
    if scale is not None:
        y = y * scale + bias
    return y


def _avg_pool_3x3(x):
    lead = x.shape[:-3]
    y = ops.avg_pool_3x3(x.reshape((-1,) + x.shape[-3:]))
    return y.reshape(lead + y.shape[1:])


def _avg_pool_2x2(x):
    lead = x.shape[:-3]
    y = ops.avg_pool_2x2(x.reshape((-1,) + x.shape[-3:]))
    return y.reshape(lead + y.shape[1:])


def _bcast(v, like):
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


@jax.custom_vjp
def to_slots(x, slot_arch, arch_pos):
    """``x[slot_arch]`` (zeros where ``slot_arch`` is past the end): architectures into op groups.

    Every architecture sits in at most one slot (``none``'s in none), so the transpose is again a gather
    (``g[arch_pos]``), not a scatter-add (slow on XLA's CPU backend).
    """
    return _to_slots_fwd(x, slot_arch, arch_pos)[0]


def _to_slots_fwd(x, slot_arch, arch_pos):  # a plain gather, so jvp can trace it (grasp runs jvp over grad)
    return x.at[slot_arch].get(mode="fill", fill_value=0), (slot_arch, arch_pos)


def _to_slots_bwd(res, g):
    slot_arch, arch_pos = res
    return g.at[arch_pos].get(mode="fill", fill_value=0), None, None


to_slots.defvjp(_to_slots_fwd, _to_slots_bwd)


@jax.custom_vjp
def from_slots(y, slot_arch, arch_pos):
    """``y[arch_pos]``: each architecture's result back from its slot (zeros past the end: ``none``)."""
    return _from_slots_fwd(y, slot_arch, arch_pos)[0]


def _from_slots_fwd(y, slot_arch, arch_pos):  # a plain gather, as above
    return y.at[arch_pos].get(mode="fill", fill_value=0), (slot_arch, arch_pos)


def _from_slots_bwd(res, g):
    slot_arch, arch_pos = res
    return g.at[slot_arch].get(mode="fill", fill_value=0), None, None


from_slots.defvjp(_from_slots_fwd, _from_slots_bwd)


def edge_plan(op, capacity):
    """Slots of one edge: ``slot_arch`` ``(4 K,)`` and ``arch_pos`` ``(A,)``, the slot of every architecture.

    Ops skip, conv 1x1, conv 3x3 and avg-pool own ``K`` slots each (op ``o`` the slots
    ``(o - 1) K .. o K - 1``; unfilled ones hold ``A``). ``none`` owns no slot: its
    architectures point one past the end (``4 K``), which reads as zeros, so any number of
    architectures may choose ``none`` on an edge without costing a slot.
    """
    num = op.shape[0]
    slot_arch = jnp.concatenate([jnp.nonzero(op == o, size=capacity, fill_value=num)[0] for o in range(1, space.NUM_OPS)])
    onehot = (op[:, None] == jnp.arange(space.NUM_OPS)).astype(jnp.int32)
    rank = jnp.take_along_axis(jnp.cumsum(onehot, axis=0), op[:, None], axis=1)[:, 0] - 1
    none = space.OPS.index("none")
    return slot_arch, jnp.where(op == none, (space.NUM_OPS - 1) * capacity, _first_slot(op, capacity) + rank)


def _first_slot(op, capacity):
    """First slot of op ``op``'s group (``none`` has none: see :func:`edge_plan`)."""
    return (op - 1) * capacity


def normalize_capacity(capacity) -> tuple[int, ...]:
    """Slots per (edge, op) as a tuple over the 6 edges (from one int or 6)."""
    if isinstance(capacity, (int, np.integer)):
        return (int(capacity),) * space.NUM_EDGES
    capacity = tuple(int(c) for c in capacity)
    if len(capacity) != space.NUM_EDGES or min(capacity) < 1:
        raise ValueError(f"capacity must be a positive int or {space.NUM_EDGES} positive ints, got {capacity}")
    return capacity


def _plain(gather):
    return lambda x, slot_arch, arch_pos: gather(x, slot_arch, arch_pos)[0]


def _cell(h0, cell_params, encodings, capacity, variant, tape, inv_scale):
    num = h0.shape[0]
    # forward-mode differentiation (synflow's jvp) cannot go through the custom-VJP gathers
    gather_in, gather_out = (_plain(_to_slots_fwd), _plain(_from_slots_fwd)) if tape.forward_mode else (to_slots, from_slots)
    nodes = [h0]
    incoming = {j: [] for j in range(1, space.NUM_NODES)}
    for i, out_edges in enumerate(OUT_EDGES):
        h = nodes[i]
        if tape.collect_codes:
            convs = sum(((encodings[:, e] == CONV1) | (encodings[:, e] == CONV3)).astype(h.dtype) for e in out_edges)
            tape.relu_code(h, convs)
        for edge in out_edges:
            k = capacity[edge]
            slot_arch, arch_pos = edge_plan(encodings[:, edge], k)
            groups = gather_in(h, slot_arch, arch_pos)
            outs = [groups[_first_slot(SKIP, k) : _first_slot(SKIP, k) + k]]
            for kind, w, b, size in (
                (CONV1, cell_params["w1"][edge][None, None], cell_params["b1"][edge], 1),
                (CONV3, cell_params["w3"][edge], cell_params["b3"][edge], 3),
            ):
                first = _first_slot(kind, k)
                slots = slot_arch[first : first + k]
                x = jax.nn.relu(groups[first : first + k])
                bias = b if inv_scale is None else b * _bcast(inv_scale.at[slots].get(mode="fill", fill_value=0), x[..., :1])

                def compute(x=x, w=w, size=size):
                    return _conv(x, w, 1, (size - 1) // 2)

                if k == 1:  # the one-architecture loop: skip an unchosen conv outright
                    y = lax.cond(slots[0] < num, compute, lambda x=x: jnp.zeros_like(x))
                else:
                    y = compute()
                y = tape.layer(y, x, w, slots, LayerMeta("conv", size, 1, (size - 1) // 2, cell=True), bias=bias)
                if variant == "bn":
                    y = _bn(y, tape=tape, slots=slots)
                outs.append(y)
            outs.append(_avg_pool_3x3(groups[_first_slot(POOL, k) : _first_slot(POOL, k) + k]))
            incoming[space.EDGES[edge][1]].append(gather_out(jnp.concatenate(outs), slot_arch, arch_pos))
        nodes.append(sum(incoming[i + 1]))
    return nodes[-1]


def _reduction(p, x, variant, tape, inv_scale):
    num = x.shape[0]
    slots = jnp.arange(num)
    eps_a = ops.BN_EPS if inv_scale is None else ops.BN_EPS * _bcast(jnp.square(inv_scale), x)
    tape.relu_code(x)
    r = jax.nn.relu(x)
    y = tape.layer(_conv(r, p["conv_a"], 2, 1), r, p["conv_a"], slots, LayerMeta("conv", 3, 2, 1))
    y = _bn(y, p["scale_a"], p["bias_a"], eps=eps_a, tape=tape, slots=slots)
    tape.relu_code(y)
    r2 = jax.nn.relu(y)
    y = tape.layer(_conv(r2, p["conv_b"], 1, 1), r2, p["conv_b"], slots, LayerMeta("conv", 3, 1, 1))
    y = _bn(y, p["scale_b"], p["bias_b"], tape=tape, slots=slots)
    pooled = _avg_pool_2x2(x)
    shortcut = tape.layer(_conv(pooled, p["shortcut"], 1, 0), pooled, p["shortcut"], slots, LayerMeta("conv", 1, 1, 0))
    if inv_scale is not None:
        y = y * _bcast(inv_scale, y)
    return shortcut + y


CELL_LAYERS = 2 * space.NUM_EDGES  # records per cell: a 1x1 and a 3x3 group on every edge


def _stage(x, log_scale, stage, encodings, capacity, variant, tape, scan: bool):
    """The N identical cells of a stage, unrolled or under ``lax.scan`` (``config.scan_cells``).

    Under scan, compile time does not grow with N (measured: 4 min vs 6 min for the full
    synflow scorer on a loaded 2-core CPU) but the steps ran slower; the cells' tape records
    come out stacked along a leading cell axis (``LayerMeta.stacked``).
    """
    synflow = variant == "synflow"
    if not scan:
        for n in range(stage["w1"].shape[0]):
            cell_params = {name: stage[name][n] for name in ("w1", "w3", "b1", "b3")}
            x = _cell(x, cell_params, encodings, capacity, variant, tape, jnp.exp(-log_scale) if synflow else None)
            if synflow:
                x, log_scale = _rescale(x, log_scale)
        return x, log_scale
    base = len(tape.records)
    probes = None if tape.probes is None else list(tape.probes[base : base + CELL_LAYERS])
    metas = []

    def body(carry, xs):
        h, log_s = carry
        cell_params, cell_probes = xs
        sub = Tape(cell_probes, collect_codes=tape.collect_codes, weight_scale=tape.weight_scale,
                   forward_mode=tape.forward_mode)
        inv = jnp.exp(-log_s) if synflow else None
        h = _cell(h, cell_params, encodings, capacity, variant, sub, inv)
        if synflow:
            h, log_s = _rescale(h, log_s)
        metas[:] = sub.meta
        kernel = sum(sub.kernels) if sub.kernels else None
        return (h, log_s), (sub.records, kernel, sub.bn_stds)

    cell_params = {name: stage[name] for name in ("w1", "w3", "b1", "b3")}
    (x, log_scale), (records, kernel, bn_stds) = lax.scan(body, (x, log_scale), (cell_params, probes))
    for record, meta in zip(records, metas):
        tape.meta.append(dataclasses.replace(meta, stacked=True))
        tape.records.append(record)
    if kernel is not None:
        tape.kernels.append(jnp.sum(kernel, axis=0))
    for value, slots in bn_stds:
        tape.bn_stds.append((value.reshape(-1), slots.reshape(-1)))
    return x, log_scale


def _rescale(x, log_scale):
    peak = lax.stop_gradient(jnp.max(jnp.abs(x), axis=(1, 2, 3, 4)))
    peak = jnp.where(peak > 0, peak, 1.0)
    return x / _bcast(peak, x), log_scale + jnp.log(peak)


def apply(params, images, encodings, config: supernet.SupernetConfig, *, variant: str = "bn",
          capacity: int | None = None, tape: Tape | None = None, features_only: bool = False):
    """Logits ``(A, B, classes)`` of ``A`` discrete architectures on their own input copies.

    Args:
      params: :func:`init_params` pytree (shared by all ``A`` architectures).
      images: ``(A, B, H, W, C_in)``, one copy per architecture (differentiable per copy),
        or ``(1, B, H, W, C_in)`` shared by all (the stem convolution then runs once; its
        per-architecture weight gradients are one product, see :func:`slot_weight_grad`).
      encodings: ``(A, 6)`` int op indices.
      config: shapes (``cells`` must match ``params``).
      variant: ``"bn"`` or ``"synflow"`` (see the module docstring).
      capacity: slots per (edge, op): an int for every edge or one per edge (6); at least
        the largest number of architectures choosing one op other than ``none`` on that
        edge (``batched.required_capacity``), else results are wrong. ``None``: ``A``
        (always correct, no saving).
      tape: records weight layers (probes, NASWOT codes, BN statistics).
      features_only: return the pre-pooling feature map (after the head's BN+ReLU).

    Returns:
      ``(logits, log_scale)``: ``log_scale`` ``(A,)`` is ``log S`` of the synflow variant
      (the true logits are ``S`` times those returned), zeros for ``"bn"``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown network variant {variant!r} (known: {', '.join(VARIANTS)})")
    num = encodings.shape[0]
    if images.ndim != 5 or images.shape[0] not in (1, num):
        raise ValueError(f"images must be (A, B, H, W, C) or (1, B, H, W, C) for A={num} architectures, "
                         f"got shape {tuple(images.shape)}")
    capacity = normalize_capacity(num if capacity is None else capacity)
    tape = tape if tape is not None else Tape()
    synflow = variant == "synflow"
    stem = params["stem"]
    slots = jnp.arange(num)
    # A shared input (leading axis 1) is convolved once and its output broadcast: the
    # tape's probes, scales and BatchNorm still act per architecture.
    y = _conv(images, stem["w"], 1, 1)
    y = jnp.broadcast_to(y, (num,) + y.shape[1:])
    x = tape.layer(y, images, stem["w"], slots, LayerMeta("conv", 3, 1, 1))
    if not synflow:
        x = _bn(x, stem["scale"], stem["bias"], tape=tape, slots=slots)
    log_scale = jnp.zeros((num,), x.dtype)
    for s, stage in enumerate(params["stages"]):
        x, log_scale = _stage(x, log_scale, stage, encodings, capacity, variant, tape, config.scan_cells)
        if s < len(params["reductions"]):
            x = _reduction(params["reductions"][s], x, variant, tape, jnp.exp(-log_scale) if synflow else None)
    head = params["head"]
    if not synflow:
        x = _bn(x, head["scale"], head["bias"], tape=tape, slots=slots)
    tape.relu_code(x)
    x = jax.nn.relu(x)
    if features_only:
        return x, log_scale
    pooled = jnp.mean(x, axis=(2, 3))
    bias = head["b"] if not synflow else head["b"] * jnp.exp(-log_scale)[:, None, None]
    logits = tape.layer(jnp.einsum("abc,ck->abk", pooled, head["w"]), pooled, head["w"], slots, LayerMeta("linear", 0, 0, 0), bias=bias)
    return logits, log_scale


def slot_weight_grad(x, g, meta: LayerMeta):
    """Per-slot weight gradient ``(K, *w.shape)`` from a layer's inputs ``x`` and output gradients ``g``.

    ``x`` is ``(K, B, H, W, C_in)``, or ``(1, B, H, W, C_in)`` shared by every slot (the
    stem on a shared input: then all ``K`` gradients are one product). Otherwise
    convolutions go one slot at a time under ``lax.map``, each as ONE matrix product over
    ``B, H, W`` with ``k*k*C`` columns (:func:`_one_slot_conv_weight_grad`). Measured on
    the 2-core CPU (2026-11-26, 5 slots, batch 16): 32x32x16 3x3, 13.2 ms as nine per-tap
    products vs 4.0 ms; snip 5 % faster per chunk (A/B in one process). A batched form
    over slots copied every tap into a transposed layout and was 3x slower still.
    """
    if meta.kind == "linear":
        return jnp.einsum("kbc,kbd->kcd", x, g)
    if x.shape[0] == 1 < g.shape[0]:
        return _shared_input_weight_grad(x[0], g, meta)
    if x.shape[0] == 1:
        return _one_slot_conv_weight_grad(x[0], g[0], meta)[None]
    return lax.map(lambda xg: _one_slot_conv_weight_grad(xg[0], xg[1], meta), (x, g))


def _patches(x, meta: LayerMeta, ho, wo):
    """``(B ho wo, k k C_in)``: every output position's receptive field (im2col), taps in ``(i, j)`` order."""
    k, s, p = meta.kernel, meta.stride, meta.padding
    if p:
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    taps = [x[:, i : i + (ho - 1) * s + 1 : s, j : j + (wo - 1) * s + 1 : s] for i in range(k) for j in range(k)]
    return (taps[0] if k == 1 else jnp.concatenate(taps, -1)).reshape(-1, k * k * x.shape[-1])


def _shared_input_weight_grad(x, g, meta: LayerMeta):
    """Every slot's weight gradient when all slots share the input ``x`` ``(B, H, W, C_in)``."""
    num, cout = g.shape[0], g.shape[-1]
    patches = _patches(x, meta, g.shape[2], g.shape[3])
    gs = jnp.moveaxis(g, 0, -2).reshape(patches.shape[0], num * cout)  # (B ho wo, K C_out)
    dw = lax.dot_general(patches, gs, (((0,), (0,)), ((), ())))
    k = meta.kernel
    return jnp.moveaxis(dw.reshape(k, k, x.shape[-1], num, cout), 3, 0)


def _one_slot_conv_weight_grad(x, g, meta: LayerMeta):
    """``dW`` ``(k, k, C_in, C_out)`` of one slot: ``x`` ``(B, H, W, C_in)``, ``g`` ``(B, ho, wo, C_out)``.

    Stride 1 ("same" or smaller padding): ``dW[i, j] = Σ_q x[q] g[q + p - (i, j)]``, one
    product of ``x`` ``(B H W, C_in)`` with the ``k*k`` shifts of the zero-padded ``g``
    (measured fastest at 32x32 and 16x16); otherwise im2col of ``x`` times ``g``.
    """
    k, s, p = meta.kernel, meta.stride, meta.padding
    cin, cout = x.shape[-1], g.shape[-1]
    if s != 1 or k == 1:
        dw = lax.dot_general(_patches(x, meta, g.shape[1], g.shape[2]), g.reshape(-1, cout), (((0,), (0,)), ((), ())))
        return dw.reshape(k, k, cin, cout)
    h, w = x.shape[1], x.shape[2]
    q = k - 1 - p  # g padded so that shift (i, j) is the window starting at (k-1-i, k-1-j)
    gp = jnp.pad(g, ((0, 0), (q, q + h - g.shape[1]), (q, q + w - g.shape[2]), (0, 0)))
    shifts = [gp[:, k - 1 - i : k - 1 - i + h, k - 1 - j : k - 1 - j + w] for i in range(k) for j in range(k)]
    dw = lax.dot_general(x.reshape(-1, cin), jnp.concatenate(shifts, -1).reshape(-1, k * k * cout), (((0,), (0,)), ((), ())))
    return jnp.transpose(dw.reshape(cin, k, k, cout), (1, 2, 0, 3))


def layer_values(record, meta: LayerMeta, grad, fn):
    """``fn(record, meta, grad) -> (K,)`` per slot, and the slots; stacked records are vmapped and flattened."""
    if meta.stacked:
        values = jax.vmap(lambda r, g: fn(r, meta, g))(record, grad)
        return values.reshape(-1), record["slots"].reshape(-1)
    return fn(record, meta, grad), record["slots"]


def sum_over_layers(records, meta, grads, fn, num):
    """Per-architecture sum over all weight layers of ``fn``'s per-slot values."""
    total = jnp.zeros((num,), jnp.float32)
    for record, m, g in zip(records, meta, grads):
        values, slots = layer_values(record, m, g, fn)
        total = total + scatter_to_archs(values, slots, num)
    return total


def scatter_to_archs(values, slots, num):
    """Sums per-slot values ``(K,)`` into per-architecture ``(num,)``; unfilled slots dropped."""
    return jnp.zeros((num,), values.dtype).at[slots].add(values, mode="drop")


def probe_shapes(fn):
    """Shapes of every recorded layer output of ``fn(tape)`` (traced, not run)."""

    def outputs():
        tape = Tape()
        fn(tape)
        return [r["y"] for r in tape.records]

    return jax.eval_shape(outputs)


def with_output_grads(objective_fn, tape_kwargs=None):
    """Runs ``objective_fn(tape) -> (scalar, aux)`` with probes; returns ``(records, meta, probe grads, aux)``."""
    tape_kwargs = tape_kwargs or {}
    shapes = probe_shapes(lambda tape: objective_fn(tape))
    zeros = [jnp.zeros(s.shape, s.dtype) for s in shapes]
    holder = {}

    def run(probes):
        tape = Tape(probes, **tape_kwargs)
        value, aux = objective_fn(tape)
        holder["meta"] = tape.meta
        return value, (tape.records, aux)

    grads, (records, aux) = jax.grad(run, has_aux=True)(zeros)
    return records, holder["meta"], grads, aux


def count_ops(encodings) -> np.ndarray:
    """``(A, 5)`` number of edges carrying each op."""
    enc = np.asarray(encodings)
    return np.stack([(enc == o).sum(-1) for o in range(space.NUM_OPS)], -1)
