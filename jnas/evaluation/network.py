"""The DARTS evaluation network (``NetworkCIFAR``), as pure functions over flat pytrees.

As the DARTS reference ``cnn/model.py``:

  stem: conv3x3(in -> 3C) + BN
  ``layers`` cells built from a :class:`jnas.spaces.darts.Genotype`; reduction cells
  at ``layers // 3`` and ``2 * layers // 3`` (width doubles, resolution halves)
  auxiliary head (optional, training only) on the output of cell ``2 * layers // 3``
  head: global average pool + linear

A cell preprocesses its two inputs to C channels (ReLU-conv1x1-BN, or a factorized
reduce after a reduction cell), then node ``2 + i`` is ``op_a(h_a) + op_b(h_b)`` for
the genotype's two pairs of that node; its output concatenates the ``concat`` nodes.
Every op but the identity ``skip_connect`` gets drop path while training. All BNs are
affine and keep running statistics (PyTorch's: momentum 0.1, unbiased running
variance), which evaluation uses.

``params`` and ``batch_stats`` are flat dicts keyed by dotted paths; only ``params``
are counted (:func:`count_params`, which matches the reference's
``sum(p.numel() for p in model.parameters())``: 3,349,342 for DARTS_V2 at C=36,
20 layers, 10 classes; 3,825,768 with the auxiliary head).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jnas.spaces import darts as space
from jnas.supernet import darts_ops as dops
from jnas.supernet import ops as base_ops
from jnas.supernet.darts import cell_plan

BN_MOMENTUM = 0.1
AUX_CHANNELS = (128, 768)


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Shape of the evaluation network (defaults: DARTS on CIFAR-10)."""

    channels: int = 36
    layers: int = 20
    num_classes: int = 10
    in_channels: int = 3
    auxiliary: bool = False
    stem_multiplier: int = 3

    def __post_init__(self):
        for name in ("channels", "layers", "num_classes", "in_channels", "stem_multiplier"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"NetworkConfig.{name} must be a positive integer, got {value!r}")
        if self.channels % 2:
            raise ValueError(f"channels must be even (factorized reduce halves them), got {self.channels}")


class EvalNetwork(NamedTuple):
    """Pure functions of one genotype's evaluation network.

    Attributes:
      init: ``key -> (params, batch_stats)``.
      apply: ``(params, batch_stats, images, *, train, key=None, drop_prob=0.0) ->
        (logits, aux_logits, new_batch_stats)``; ``aux_logits`` is ``None`` unless
        training with the auxiliary head; ``new_batch_stats`` equals ``batch_stats``
        when not training.
      param_shapes: ``{path: shape}`` of the parameters.
      genotype, config: what was built.
    """

    init: Callable[[jax.Array], tuple[dict, dict]]
    apply: Callable[..., tuple[jax.Array, Any, dict]]
    param_shapes: dict[str, tuple[int, ...]]
    genotype: space.Genotype
    config: NetworkConfig


def _cell_ops(genotype: space.Genotype, reduction: bool):
    pairs = genotype.reduce if reduction else genotype.normal
    concat = genotype.reduce_concat if reduction else genotype.normal_concat
    return pairs, tuple(concat)


def _shapes(genotype: space.Genotype, config: NetworkConfig) -> dict[str, tuple[tuple[int, ...], int]]:
    shapes: dict[str, tuple[tuple[int, ...], int]] = {}

    def bn(path, c):
        shapes[f"{path}.scale"] = ((c,), 0)
        shapes[f"{path}.bias"] = ((c,), 0)

    stem_c = config.stem_multiplier * config.channels
    shapes["stem.conv"] = ((3, 3, config.in_channels, stem_c), 9 * config.in_channels)
    bn("stem.bn", stem_c)
    plan = _plan(genotype, config)
    for i, (reduction, reduction_prev, c_pp, c_p, c, _) in enumerate(plan):
        pre = f"cells.{i}"
        if reduction_prev:
            shapes[f"{pre}.pre0.fr1"] = ((c_pp, c // 2), c_pp)
            shapes[f"{pre}.pre0.fr2"] = ((c_pp, c // 2), c_pp)
        else:
            shapes[f"{pre}.pre0.w"] = ((c_pp, c), c_pp)
        bn(f"{pre}.pre0.bn", c)
        shapes[f"{pre}.pre1.w"] = ((c_p, c), c_p)
        bn(f"{pre}.pre1.bn", c)
        pairs, _ = _cell_ops(genotype, reduction)
        for k, (name, src) in enumerate(pairs):
            stride = 2 if reduction and src < space.NUM_INPUTS else 1
            for suffix, spec in dops.op_param_shapes(name, c, stride, affine=True).items():
                shapes[f"{pre}.op{k}.{suffix}"] = spec
    if config.auxiliary:
        c_aux = plan[2 * config.layers // 3][5]
        a, b = AUX_CHANNELS
        shapes["aux.conv1"] = ((1, 1, c_aux, a), c_aux)
        bn("aux.bn1", a)
        shapes["aux.conv2"] = ((2, 2, a, b), 4 * a)
        bn("aux.bn2", b)
        shapes["aux.w"] = ((b, config.num_classes), b)
        shapes["aux.b"] = ((config.num_classes,), b)
    last = plan[-1][5]
    shapes["head.w"] = ((last, config.num_classes), last)
    shapes["head.b"] = ((config.num_classes,), last)
    return shapes


def _plan(genotype, config):
    """Per cell: ``(reduction, reduction_prev, C_prev_prev, C_prev, C, C_out)``."""
    base = cell_plan(config.layers, config.channels, config.stem_multiplier)
    plan = []
    for reduction, reduction_prev, _, _, c in base:
        plan.append([reduction, reduction_prev, None, None, c, len(_cell_ops(genotype, reduction)[1]) * c])
    c_pp = c_p = config.stem_multiplier * config.channels
    for row in plan:  # the cell's concat length sets the next widths (multiplier)
        row[2], row[3] = c_pp, c_p
        c_pp, c_p = c_p, row[5]
    return [tuple(r) for r in plan]


def count_params(genotype: space.Genotype, config: NetworkConfig) -> int:
    """Number of trainable parameters, without allocating them."""
    return int(sum(int(np.prod(shape)) for shape, _ in _shapes(genotype, config).values()))


def _stat_paths(shapes):
    return sorted({p[: -len(".scale")] for p in shapes if p.endswith(".scale")})


def _aux_pool(x):
    """DARTS' AvgPool2d(5, stride=3) on the 8x8 map of CIFAR (-> 2x2); other sizes
    average into a 2x2 grid the adaptive way, so the 2x2 conv that follows fits."""
    _, h, w, _ = x.shape
    if all(8 <= n <= 10 for n in (h, w)):
        s = lax.reduce_window(x, 0.0, lax.add, (1, 5, 5, 1), (1, 3, 3, 1), "VALID")
        return s / 25.0

    def bounds(n):
        return [(i * n // 2, -(-(i + 1) * n // 2)) for i in range(2)]

    rows = [jnp.concatenate([x[:, a:b, c:d].mean(axis=(1, 2), keepdims=True) for c, d in bounds(w)], axis=2)
            for a, b in bounds(h)]
    return jnp.concatenate(rows, axis=1)


def _drop_path(x, key, drop_prob):
    keep = 1.0 - drop_prob
    mask = jax.random.bernoulli(key, keep, (x.shape[0], 1, 1, 1)).astype(x.dtype)
    return x / keep * mask


def network(genotype: space.Genotype, config: NetworkConfig) -> EvalNetwork:
    """Builds the evaluation network of ``genotype`` (validated against the ops built here)."""
    space.validate(genotype, dops.SUPPORTED_OPS)
    shapes = _shapes(genotype, config)
    plan = _plan(genotype, config)
    stat_paths = _stat_paths(shapes)
    aux_at = 2 * config.layers // 3

    def init(key):
        params = dops.init_params(key, shapes)
        stats = {}
        for path in stat_paths:
            c = shapes[f"{path}.scale"][0]
            stats[f"{path}.mean"] = jnp.zeros(c)
            stats[f"{path}.var"] = jnp.ones(c)
        return params, stats

    def apply(params, batch_stats, images, *, train: bool, key=None, drop_prob=0.0):
        new_stats = dict(batch_stats)
        counter = iter(range(1 << 30))
        if key is None:
            key = jax.random.key(0)

        def next_key():
            return jax.random.fold_in(key, next(counter))

        def bn(x, path):
            scale, bias = params[f"{path}.scale"], params[f"{path}.bias"]
            if train:
                mean = jnp.mean(x, axis=(0, 1, 2))
                var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
                n = x.shape[0] * x.shape[1] * x.shape[2]
                unbiased = var * (n / max(n - 1, 1))
                m = lax.stop_gradient
                new_stats[f"{path}.mean"] = (1 - BN_MOMENTUM) * batch_stats[f"{path}.mean"] + BN_MOMENTUM * m(mean)
                new_stats[f"{path}.var"] = (1 - BN_MOMENTUM) * batch_stats[f"{path}.var"] + BN_MOMENTUM * m(unbiased)
            else:
                mean, var = batch_stats[f"{path}.mean"], batch_stats[f"{path}.var"]
            return (x - mean) * lax.rsqrt(var + base_ops.BN_EPS) * scale + bias

        x = bn(base_ops.conv2d(images, params["stem.conv"], 1, 1), "stem.bn")
        s0 = s1 = x
        aux_logits = None
        for i, (reduction, reduction_prev, _, _, _, _) in enumerate(plan):
            pre = f"cells.{i}"
            if reduction_prev:
                h0 = dops.factorized_reduce(s0, params[f"{pre}.pre0.fr1"], params[f"{pre}.pre0.fr2"], bn, f"{pre}.pre0.bn")
            else:
                h0 = dops.relu_conv_bn(s0, params[f"{pre}.pre0.w"], bn, f"{pre}.pre0.bn")
            h1 = dops.relu_conv_bn(s1, params[f"{pre}.pre1.w"], bn, f"{pre}.pre1.bn")
            states = [h0, h1]
            pairs, concat = _cell_ops(genotype, reduction)
            for node in range(len(pairs) // 2):
                total = None
                for k in (2 * node, 2 * node + 1):
                    name, src = pairs[k]
                    stride = 2 if reduction and src < space.NUM_INPUTS else 1
                    y = dops.apply_op(name, states[src], stride, params, f"{pre}.op{k}", bn,
                                      key=next_key() if name == space.NOISE else None)
                    if y is None:  # 'none'
                        y = jnp.zeros_like(states[src][:, ::stride, ::stride])
                    identity = name == "skip_connect" and stride == 1
                    if train and not identity and not (isinstance(drop_prob, float) and drop_prob == 0.0):
                        y = _drop_path(y, next_key(), drop_prob)
                    total = y if total is None else total + y
                states.append(total)
            s0, s1 = s1, jnp.concatenate([states[j] for j in concat], axis=-1)
            if i == aux_at and config.auxiliary and train:
                a = _aux_pool(jax.nn.relu(s1))
                a = jax.nn.relu(bn(base_ops.conv2d(a, params["aux.conv1"], 1, 0), "aux.bn1"))
                a = jax.nn.relu(bn(base_ops.conv2d(a, params["aux.conv2"], 1, 0), "aux.bn2"))
                aux_logits = jnp.mean(a, axis=(1, 2)) @ params["aux.w"] + params["aux.b"]
        feats = jnp.mean(s1, axis=(1, 2))
        logits = feats @ params["head.w"] + params["head.b"]
        return logits, aux_logits, new_stats

    return EvalNetwork(
        init=init,
        apply=apply,
        param_shapes={p: s for p, (s, _) in shapes.items()},
        genotype=genotype,
        config=config,
    )
