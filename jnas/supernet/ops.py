"""Primitive operations of the NAS-Bench-201 supernet, written for XLA's CPU backend.

Layout is NHWC throughout. Two choices here are deliberate and measured
(`experiments/bench_step/`):

* ``conv2d`` has a custom VJP. XLA's own transpose rule expresses the filter
  gradient as a convolution with the batch as feature dimension; on CPU that needs
  the input re-laid out NHWC -> CHWN, and XLA fuses the whole upstream elementwise
  chain (a cell's skip paths make every node a sum of everything before it) into
  that transpose, recomputing it with a cache-hostile access pattern. Here the
  filter gradient is one GEMM of the (materialised) im2col patches against the
  output gradient, contracting over (N, H, W), and the input gradient is a plain
  forward convolution with the flipped kernel: no activation transposes at all.
* Average pooling with ``count_include_pad=False`` is written as separable
  shifted sums divided by a constant count map: purely elementwise, so its
  gradient is too.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

BN_EPS = 1e-5
_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, stride, padding):
    return lax.conv_general_dilated(
        x, w, (stride, stride), ((padding, padding), (padding, padding)), dimension_numbers=_DN
    )


def _patches_t(x, kh, kw, stride, padding, out_h, out_w):
    """Channel-major im2col: ``(kh*kw*C, N*out_h*out_w)``, the canonical GEMM operand.

    The activation is transposed once (NHWC -> CNHW, a plain copy of a materialised
    array), then the taps are strided slices stacked along the major axis, so the
    filter-gradient GEMM needs no further relayout.
    """
    n, _, _, c = x.shape
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    xt = jnp.transpose(x, (3, 0, 1, 2))
    taps = [
        xt[:, :, i : i + (out_h - 1) * stride + 1 : stride, j : j + (out_w - 1) * stride + 1 : stride]
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.stack(taps).reshape(kh * kw * c, n * out_h * out_w)


def _at_b(a, b):
    """``a.T @ b`` contracting the (major) row axis; XLA's CPU dot takes it without a copy."""
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())))


def _same_conv_filter_grad(x, g, kh, kw, padding):
    """Filter gradient of a stride-1 'same' convolution without im2col.

    On the zero-padded input flattened to rows ``(N*Hp*Wp, C)``, the input pixel
    under tap ``(i, j)`` of output pixel ``p`` is row ``p + i*Wp + j`` once the
    output gradient is laid on the same padded grid. So each tap's gradient is one
    GEMM of a *contiguous* row slice against the output gradient: no strided
    copies, no transposes.
    """
    n, h, w, cin = x.shape
    cout = g.shape[-1]
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    hp, wp = h + 2 * padding, w + 2 * padding
    rows = n * hp * wp
    span = rows - (kh - 1) * wp - (kw - 1)
    x_rows = xp.reshape(rows, cin)
    g_rows = jnp.pad(g, ((0, 0), (0, hp - h), (0, wp - w), (0, 0))).reshape(rows, cout)[:span]
    taps = [_at_b(lax.slice_in_dim(x_rows, i * wp + j, i * wp + j + span), g_rows) for i in range(kh) for j in range(kw)]
    return jnp.stack(taps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, w, stride: int = 1, padding: int = 0):
    """2-D convolution, NHWC input, HWIO kernel, no bias; gradients by GEMMs (see module doc)."""
    return _conv(x, w, stride, padding)


def _conv2d_fwd(x, w, stride, padding):
    return _conv(x, w, stride, padding), (x, w)


def _conv2d_bwd(stride, padding, residuals, g):
    x, w = residuals
    kh, kw, cin, cout = w.shape
    n, out_h, out_w, _ = g.shape
    g_rows = g.reshape(n * out_h * out_w, cout)
    if kh == kw == 1 and stride == 1 and padding == 0:
        dw = _at_b(x.reshape(-1, cin), g_rows)
    elif stride == 1 and 2 * padding == kh - 1 == kw - 1:
        dw = _same_conv_filter_grad(x, g, kh, kw, padding)
    else:
        dw = _patches_t(x, kh, kw, stride, padding, out_h, out_w) @ g_rows
    dw = dw.reshape(kh, kw, cin, cout)
    # Input gradient: a forward convolution of the (dilated, for stride 2) output
    # gradient with the spatially flipped, in/out-swapped kernel.
    w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    if stride > 1:
        g = lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), (0, 0, stride - 1), (0, 0, stride - 1), (0, 0, 0)))
    h, wd = x.shape[1], x.shape[2]
    # full padding (k-1-p) on the leading side; the trailing side makes the output H x W
    lo_h, lo_w = kh - 1 - padding, kw - 1 - padding
    hi_h = h + kh - 1 - lo_h - g.shape[1]
    hi_w = wd + kw - 1 - lo_w - g.shape[2]
    dx = lax.conv_general_dilated(g, w_t, (1, 1), ((lo_h, hi_h), (lo_w, hi_w)), dimension_numbers=_DN)
    return dx, dw


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def batch_norm(x, scale=None, bias=None):
    """BatchNorm with batch statistics (biased variance, eps 1e-5), optionally affine.

    The search network never tracks running statistics, as in the reference search
    code, so train and evaluation use the statistics of the batch at hand.
    """
    mean = jnp.mean(x, axis=(0, 1, 2))
    centered = x - mean
    var = jnp.mean(jnp.square(centered), axis=(0, 1, 2))
    y = centered * lax.rsqrt(var + BN_EPS)
    if scale is not None:
        y = y * scale + bias
    return y


@functools.lru_cache(maxsize=None)
def _inverse_counts(h: int, w: int) -> np.ndarray:
    def count(n):
        c = np.full(n, 3.0)
        c[0] -= 1
        c[-1] -= 1
        return c if n > 1 else np.ones(1, np.float32)

    return (1.0 / np.outer(count(h), count(w)))[None, :, :, None]  # float64; cast at use


def avg_pool_3x3(x):
    """3x3 average pooling, stride 1, padding 1, ``count_include_pad=False``."""
    _, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0)))
    rows = xp[:, :-2] + xp[:, 1:-1] + xp[:, 2:] if h > 1 else x
    rp = jnp.pad(rows, ((0, 0), (0, 0), (1, 1), (0, 0)))
    sums = rp[:, :, :-2] + rp[:, :, 1:-1] + rp[:, :, 2:] if w > 1 else rows
    return sums * _inverse_counts(h, w).astype(x.dtype)


def avg_pool_2x2(x):
    """2x2 average pooling, stride 2 (odd trailing rows/columns dropped, as in PyTorch)."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
