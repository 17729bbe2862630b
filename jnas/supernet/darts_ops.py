"""The candidate operations of the DARTS space, shared by the search and evaluation networks.

Definitions follow the DARTS reference ``operations.py`` (NHWC here):

* ``sep_conv_kxk``: (ReLU, depthwise k x k, pointwise 1x1, BN) twice; only the first
  depthwise conv has the stride.
* ``dil_conv_kxk``: ReLU, depthwise k x k with dilation 2, pointwise 1x1, BN.
* ``skip_connect``: identity, or :func:`factorized_reduce` at stride 2.
* ``max_pool_3x3`` / ``avg_pool_3x3`` (``count_include_pad=False``), padding 1.
* ``none``: zeros (never computed: its weight multiplies nothing).
* ``noise`` (RobustDARTS S4): standard-normal values of the output's shape.

Parameters live in a *flat* dict keyed by dotted paths (``"cells.3.edge5.sep_conv_3x3.pw1"``),
so that counting them, decaying them and checkpointing them is a plain dict walk. Every
op is described twice: :func:`op_param_shapes` says which arrays it owns (shapes and
fan-in, for init and for counting without allocating), :func:`apply_op` runs it. The
BatchNorm is passed in as ``bn(x, path)``: the search network normalises with batch
statistics and no affine parameters, the evaluation network is affine and tracks
running statistics.

Every op is a handful of XLA operations (grouped convolution, GEMM, reduce_window), so
that the program of a whole search network stays small enough to compile quickly.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jnas import prng
from jnas.supernet import ops as base_ops

# name -> (kernel, dilation) of the conv ops
SEP_CONVS = {"sep_conv_3x3": 3, "sep_conv_5x5": 5}
DIL_CONVS = {"dil_conv_3x3": 3, "dil_conv_5x5": 5}
POOLS = ("max_pool_3x3", "avg_pool_3x3")
SUPPORTED_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                 "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "noise")

BatchNormFn = Callable[[jax.Array, str], jax.Array]


def uniform(key, shape, fan_in, dtype=jnp.float32):
    """PyTorch's default conv/linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return prng.uniform(key, shape, dtype, -bound, bound)


def depthwise_conv(x, w, stride: int = 1, dilation: int = 1):
    """Depthwise 'same' convolution, NHWC, kernel ``(k, k, C)``, padding ``dilation*(k-1)/2``.

    The output is ``ceil(H / stride)`` high, as PyTorch's with that padding. One grouped
    XLA convolution: a sum of k*k shifted slices ran faster on CPU for 5x5 kernels but
    multiplied the program size, and compile time dominated every CPU-sized run.
    """
    k = w.shape[0]
    pad = dilation * (k - 1) // 2
    return lax.conv_general_dilated(
        x, w[:, :, None, :], (stride, stride), ((pad, pad), (pad, pad)),
        rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


def pointwise_conv(x, w):
    """1x1 convolution, kernel ``(C_in, C_out)``: one GEMM over the channel axis (its
    gradients are GEMMs too, with no activation transposes), and it batches under vmap."""
    return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def max_pool_3x3(x, stride: int = 1):
    """3x3 max pooling, padding 1 (padding never wins), output ``ceil(H / stride)``."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                             ((0, 0), (1, 1), (1, 1), (0, 0)))


def avg_pool_3x3(x, stride: int = 1):
    """3x3 average pooling, padding 1, ``count_include_pad=False``; the stride-2 windows
    are exactly every other stride-1 window."""
    y = base_ops.avg_pool_3x3(x)
    return y[:, ::stride, ::stride] if stride > 1 else y


def max_pool_2x2(x):
    """2x2 max pooling, stride 2 (PC-DARTS' bypass in reduction cells); ceil mode, so odd
    sizes match the stride-2 ops."""
    n, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
    return x.reshape(n, (h + 1) // 2, 2, (w + 1) // 2, 2, c).max(axis=(2, 4))


def stride2_pair(x):
    """The two 1x1-stride-2 samplings of :func:`factorized_reduce`: pixels (2i, 2j) and
    (2i+1, 2j+1), the latter zero-padded on odd sizes so both are ``ceil(H/2)`` high."""
    _, h, w, _ = x.shape
    a = x[:, ::2, ::2]
    b = x[:, 1::2, 1::2]
    b = jnp.pad(b, ((0, 0), (0, a.shape[1] - b.shape[1]), (0, a.shape[2] - b.shape[2]), (0, 0)))
    return a, b


def factorized_reduce(x, w1, w2, bn: BatchNormFn, path: str):
    """ReLU, two 1x1 stride-2 convs offset by one pixel (``C_out/2`` channels each), concat, BN."""
    a, b = stride2_pair(jax.nn.relu(x))
    return bn(jnp.concatenate([pointwise_conv(a, w1), pointwise_conv(b, w2)], axis=-1), path)


def relu_conv_bn(x, w, bn: BatchNormFn, path: str):
    """ReLU, 1x1 conv, BN (the cells' input preprocessing)."""
    return bn(pointwise_conv(jax.nn.relu(x), w), path)


def channel_shuffle(x, groups: int):
    """PC-DARTS' channel shuffle (NCHW ``view(B, g, C/g, ...)``, transpose, flatten), in NHWC."""
    if groups == 1:
        return x
    *lead, c = x.shape
    return x.reshape(*lead, groups, c // groups).swapaxes(-1, -2).reshape(*lead, c)


# ----------------------------------------------------------------------------- op tables


def op_param_shapes(name: str, c: int, stride: int, *, affine: bool) -> dict[str, tuple[tuple[int, ...], int]]:
    """The arrays op ``name`` owns at width ``c``: ``{suffix: (shape, fan_in)}``.

    BatchNorm entries are ``bnK.scale`` / ``bnK.bias`` (fan-in 0) and appear only when
    ``affine``. Pools own no parameters (the search network's BN after a pool is not affine).
    """
    shapes: dict[str, tuple[tuple[int, ...], int]] = {}

    def bn(tag):
        if affine:
            shapes[f"{tag}.scale"] = ((c,), 0)
            shapes[f"{tag}.bias"] = ((c,), 0)

    if name in SEP_CONVS:
        k = SEP_CONVS[name]
        for r in (1, 2):
            shapes[f"dw{r}"] = ((k, k, c), k * k)
            shapes[f"pw{r}"] = ((c, c), c)
            bn(f"bn{r}")
    elif name in DIL_CONVS:
        k = DIL_CONVS[name]
        shapes["dw"] = ((k, k, c), k * k)
        shapes["pw"] = ((c, c), c)
        bn("bn")
    elif name == "skip_connect":
        if stride > 1:
            if c % 2:
                raise ValueError(f"factorized reduce needs an even channel count, got {c}")
            shapes["fr1"] = ((c, c // 2), c)
            shapes["fr2"] = ((c, c // 2), c)
            bn("bn")
    elif name not in ("none", "noise", *POOLS):
        raise ValueError(f"unknown op {name!r}; known: {', '.join(SUPPORTED_OPS)}")
    return shapes


def apply_op(name: str, x, stride: int, params: dict, path: str, bn: BatchNormFn, *, key=None, pool_bn: bool = False):
    """Runs op ``name`` on ``x`` with the arrays ``params[f"{path}.{suffix}"]``.

    Args:
      name: op name.
      x: ``(B, H, W, C)`` input.
      stride: 1, or 2 on the reduction cell's edges from its input nodes.
      params: the flat parameter dict.
      path: this op's prefix in ``params`` (and in ``bn``'s path).
      bn: ``bn(x, path) -> x``.
      key: PRNG key of the ``noise`` op.
      pool_bn: put a BN after pooling (the search network's mixed op, as in DARTS).

    Returns:
      ``(B, ceil(H/stride), ceil(W/stride), C)``; ``None`` for ``none`` (a zero the
      caller drops).
    """
    p = lambda s: params[f"{path}.{s}"]  # noqa: E731
    if name in SEP_CONVS:
        y = depthwise_conv(jax.nn.relu(x), p("dw1"), stride)
        y = bn(pointwise_conv(y, p("pw1")), f"{path}.bn1")
        y = depthwise_conv(jax.nn.relu(y), p("dw2"), 1)
        return bn(pointwise_conv(y, p("pw2")), f"{path}.bn2")
    if name in DIL_CONVS:
        y = depthwise_conv(jax.nn.relu(x), p("dw"), stride, 2)
        return bn(pointwise_conv(y, p("pw")), f"{path}.bn")
    if name == "skip_connect":
        return x if stride == 1 else factorized_reduce(x, p("fr1"), p("fr2"), bn, f"{path}.bn")
    if name in POOLS:
        y = max_pool_3x3(x, stride) if name == "max_pool_3x3" else avg_pool_3x3(x, stride)
        return bn(y, f"{path}.bn") if pool_bn else y
    if name == "none":
        return None
    if name == "noise":
        if key is None:
            raise ValueError("the noise op needs a PRNG key")
        shape = x[:, ::stride, ::stride].shape
        return prng.normal(key, shape, x.dtype)
    raise ValueError(f"unknown op {name!r}; known: {', '.join(SUPPORTED_OPS)}")


def init_params(key, shapes) -> dict:
    """PyTorch's default init from a ``{path: (shape, fan_in)}`` table, in one draw.

    Weights U(±1/sqrt(fan_in)); paths ending in ``.scale`` (BN) are ones, ``.bias``
    zeros. Shared by the search network and the evaluation network.
    """
    sizes = [int(np.prod(shape)) for shape, _ in shapes.values()]
    flat = np.asarray(jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0))
    params, offset = {}, 0
    for (path, (shape, fan_in)), size in zip(shapes.items(), sizes):
        if path.endswith(".scale"):
            value = np.ones(shape, np.float32)
        elif path.endswith(".bias"):
            value = np.zeros(shape, np.float32)
        else:
            value = flat[offset : offset + size].reshape(shape) * np.float32(1.0 / np.sqrt(fan_in))
        offset += size
        params[path] = jnp.asarray(value)
    return params

