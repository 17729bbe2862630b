"""Primitive operations of the NAS-Bench-201 supernet, written for XLA's CPU backend.

Layout is NHWC throughout. Two choices here are deliberate and measured
(`experiments/bench_step/`):

* ``conv2d`` has a custom VJP whose input gradient is a plain forward convolution
  with the flipped kernel (measured faster on XLA CPU than XLA's own transpose). Its
  filter gradient is one convolution over the batch, written in the canonical form
  XLA CPU hands to a library (``_filter_grad``): it beat the earlier hand-written
  9-GEMM filter gradient by 1.2-5.7x per call (its strided row slices were copied out
  9 times per conv), and unlike XLA's own transpose it stays a library convolution
  inside ``lax.scan`` (``scan_cells``). Which library runs the convolutions on CPU is a
  compiler option, see :mod:`jnas.xla_options`.
* ``batch_norm`` has a custom VJP: the closed-form gradient, with the normalised
  activations recomputed from ``x`` instead of stored.
* Average pooling with ``count_include_pad=False`` is written as separable
  shifted sums divided by a constant count map: purely elementwise, so its
  gradient is too.
"""

from __future__ import annotations

import contextlib
import contextvars
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


def _filter_grad(x, g, kh, kw, stride, padding):
    """``dw`` of ``_conv(x, w, stride, padding)`` for output cotangent ``g``, as a canonical convolution.

    The channels of ``x`` act as the batch and its batch as the contracted feature; the
    output cotangent is the kernel, dilated by the stride. Written with explicit
    transposes so that the convolution is already in the form (NHWC, HWIO, NHWC) that
    XLA CPU runs with a library kernel: inside a ``lax.scan`` body XLA CPU does not
    canonicalise the transposed convolution of its own VJP and emits it as a naive loop
    (the scanned supernet's first-order step took 40 s instead of 1.7 s). At top level
    the compiled programme is the same as with XLA's transpose.
    """
    ho, wo = g.shape[1], g.shape[2]
    hi_h = kh - x.shape[1] - padding + (ho - 1) * stride
    hi_w = kw - x.shape[2] - padding + (wo - 1) * stride
    dw = lax.conv_general_dilated(
        x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), (1, 1), ((padding, hi_h), (padding, hi_w)),
        rhs_dilation=(stride, stride), dimension_numbers=_DN)
    return dw.transpose(1, 2, 0, 3)


_FILTER_GRAD_GATE = contextvars.ContextVar("jnas_filter_grad_gate", default=None)


@contextlib.contextmanager
def filter_gradients_when(gate):
    """Traced inside this block, :func:`conv2d`'s VJP forms its filter gradient only when ``gate``.

    ``gate`` is a boolean scalar array (a tracer of the function being traced); where it
    is false at run time the filter gradients are zeros and their convolutions are
    skipped (``lax.cond``), while input gradients are always formed. This lets one
    compiled gradient pass serve both full gradients and gradients whose weight part is
    discarded (the finite-difference passes of order-2 DARTS), instead of compiling a
    second, α-only pass. Only the supernets' own ``conv2d`` calls are gated. The gate is
    read when ``conv2d`` is traced: keep separately jitted functions out of the path from
    the block to ``conv2d`` (their cached traces would not see the gate, or would hold it).
    """
    token = _FILTER_GRAD_GATE.set(gate)
    try:
        yield
    finally:
        _FILTER_GRAD_GATE.reset(token)


def conv2d(x, w, stride: int = 1, padding: int = 0):
    """2-D convolution, NHWC input, HWIO kernel, no bias; input gradient by a plain convolution (module doc)."""
    gate = _FILTER_GRAD_GATE.get()
    if gate is None:
        return _conv2d(x, w, stride, padding)
    return _gated_conv2d(x, w, gate, stride, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(x, w, stride, padding):
    return _conv(x, w, stride, padding)


def _conv2d_fwd(x, w, stride, padding):
    return _conv(x, w, stride, padding), (x, w)


def _conv2d_bwd(stride, padding, residuals, g):
    x, w = residuals
    kh, kw = w.shape[:2]
    # Filter gradient: a convolution over the batch; its operand x is a materialised
    # buffer here (see materialize).
    dw = _filter_grad(x, g, kh, kw, stride, padding)
    return _input_grad(x, w, g, stride, padding), dw


def _input_grad(x, w, g, stride, padding):
    """``dx``: a forward convolution of the (dilated, for stride 2) output gradient with the
    spatially flipped, in/out-swapped kernel."""
    kh, kw = w.shape[:2]
    w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    if stride > 1:
        g = lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), (0, 0, stride - 1), (0, 0, stride - 1), (0, 0, 0)))
    h, wd = x.shape[1], x.shape[2]
    # full padding (k-1-p) on the leading side; the trailing side makes the output H x W
    lo_h, lo_w = kh - 1 - padding, kw - 1 - padding
    hi_h = h + kh - 1 - lo_h - g.shape[1]
    hi_w = wd + kw - 1 - lo_w - g.shape[2]
    return lax.conv_general_dilated(g, w_t, (1, 1), ((lo_h, hi_h), (lo_w, hi_w)), dimension_numbers=_DN)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _gated_conv2d(x, w, gate, stride, padding):
    return _conv(x, w, stride, padding)


def _gated_conv2d_fwd(x, w, gate, stride, padding):
    return _conv(x, w, stride, padding), (x, w, gate)


def _gated_conv2d_bwd(stride, padding, residuals, g):
    x, w, gate = residuals
    kh, kw = w.shape[:2]
    dw = lax.cond(gate, lambda: _filter_grad(x, g, kh, kw, stride, padding), lambda: jnp.zeros_like(w))
    return _input_grad(x, w, g, stride, padding), dw, None


_gated_conv2d.defvjp(_gated_conv2d_fwd, _gated_conv2d_bwd)


def batch_norm(x, scale=None, bias=None):
    """BatchNorm with batch statistics (biased variance, eps 1e-5), optionally affine.

    The search network never tracks running statistics, as in the reference search
    code, so train and evaluation use the statistics of the batch at hand. The
    gradient is the closed form (one fused pass for the two channel sums, one for
    ``dx``), and the normalised activations are never stored: the backward recomputes
    them from ``x``.
    """
    if scale is None:
        return _batch_norm(x)
    return _batch_norm_affine(x, scale, bias)


def _moments(x):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    return mean, lax.rsqrt(var + BN_EPS)


def _bn_grad(x, mean, rstd, dy, scale=None):
    """Gradients of ``(x - mean) * rstd [* scale + bias]`` with batch statistics.

    Returns ``dx`` and the channel sums ``sum(dy * xhat)``, ``sum(dy)`` (the gradients
    of ``scale`` and ``bias``).
    """
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    xhat = (x - mean) * rstd
    sum_dy = jnp.sum(dy, axis=axes)
    # sum(dy * xhat) from x itself: written as sum(dy * (x - mean)), XLA materialises
    # x - mean (or xhat) for the reduction, a full extra write and read of x per BN
    # (order-1 step 1.47 -> 1.41 s, measured). The cancellation costs a relative error
    # of about eps * |mean| / std (tests/test_supernet.py, large-mean case).
    sum_dy_xhat = (jnp.sum(dy * x, axis=axes) - mean * sum_dy) * rstd
    gain = rstd if scale is None else rstd * scale
    dx = gain * (dy - sum_dy / count - xhat * (sum_dy_xhat / count))
    return dx, sum_dy_xhat, sum_dy


@jax.custom_vjp
def _batch_norm(x):
    return _batch_norm_fwd(x)[0]


def _batch_norm_fwd(x):
    mean, rstd = _moments(x)
    return (x - mean) * rstd, (x, mean, rstd)


def _batch_norm_bwd(residuals, dy):
    x, mean, rstd = residuals
    return (_bn_grad(x, mean, rstd, dy)[0],)


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


@jax.custom_vjp
def _batch_norm_affine(x, scale, bias):
    return _batch_norm_affine_fwd(x, scale, bias)[0]


def _batch_norm_affine_fwd(x, scale, bias):
    mean, rstd = _moments(x)
    return (x - mean) * (rstd * scale) + bias, (x, mean, rstd, scale)


def _batch_norm_affine_bwd(residuals, dy):
    x, mean, rstd, scale = residuals
    return _bn_grad(x, mean, rstd, dy, scale)


_batch_norm_affine.defvjp(_batch_norm_affine_fwd, _batch_norm_affine_bwd)


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
