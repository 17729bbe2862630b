"""A fused Pallas kernel for the weighted sum of candidate ops (the DARTS mixed op).

A NAS-Bench-201 supernet node sums, over its incoming edges ``e`` and the candidate ops
``k`` on each edge, ``weights[e, k] * candidate[e, k]``, where every candidate is an
``(B, H, W, C)`` activation. Written as jnp this is an ``einsum``; on an accelerator an
unfused lowering can materialise the ``E * K`` weighted terms or re-read the candidates
once per partial sum. ``mixed_sum`` instead reads each candidate tile once, accumulates
in registers/VMEM and writes the node once, so its cost is one pass over the candidates.

Where it is used, and where not:

* jnas's CPU path does not use it: XLA CPU already fuses this einsum into one loop, and
  on CPU the Pallas interpreter (``interpret=True``) is for testing only -- it is much
  slower than the plain jnp version.
* On GPU it was compiled through Triton and measured on an NVIDIA H200 (jax 0.11.2,
  ``experiments/bench_step/kernel_bench.py --inner 50``, results in
  ``experiments/results/kernel_gpu.json``): exact against the float32 reference
  (forward and both gradients), but 0.82x as fast as XLA's own fusion of the einsum
  (geomean over seven NB201 node shapes; 0.45x on the small late-stage nodes, 1.27x on
  the largest) and 1.03x for forward + VJP. It does not measurably win, so the supernet
  keeps ``mixed_sum_reference``'s formulation. The TPU (Mosaic) variant has not been
  compiled (no TPU was available).

What has been verified (``tests/test_kernels.py``, on CPU in interpret mode): both
kernel variants below -- the TPU one (weights in SMEM, unmasked blocks) and the GPU one
(masked Triton loads/stores, power-of-two blocks) -- are run through the Pallas
interpreter and compared with the reference in float32 and float64, forward and
backward, under ``jit`` and ``vmap``.

Layout. The op is elementwise over the activation, so each candidate is viewed (a free,
contiguous reshape) as a 2-D ``(rows, cols)`` array: lane-dense ``(M / 128, 128)`` when
the number of elements ``M = B*H*W*C`` is a multiple of 128 (TPU vector registers are
8x128, and NB201's C of 16/32/64 would otherwise leave most lanes idle), else
``(B*H*W, C)``. The grid tiles rows and columns; a last block that runs past the array is
handled by the backend's partial-block rule on TPU (out-of-bounds reads are unused,
out-of-bounds writes dropped) and by explicit load/store masks on GPU (Triton does no
bounds checking of its own). No padded copy of the candidates is ever made.

Weights. On TPU the flattened ``(E*K,)`` weights live in SMEM (scalar memory; a scalar
read from VMEM is not supported by Mosaic). On GPU they are passed as one small full
block, read with scalar loads. On GPU the Triton backend is requested explicitly
(``pallas.triton.CompilerParams``): jax 0.10 otherwise lowers ``pallas_call`` to Mosaic
GPU, for which ``pallas_call`` is deprecated and whose rules differ.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

__all__ = ["mixed_sum", "mixed_sum_reference"]

_LANES = 128
# Per-candidate tile of the TPU variant: 256 x 128 x 4 B = 128 KiB; with NB201's at most
# 3 x 5 candidates per node, double-buffered inputs stay under 4 MiB of VMEM.
_TPU_BLOCK_ROWS = 256
_TPU_MAX_BLOCK_COLS = 512
# Triton: ~4096 elements per program is the usual size for elementwise kernels with the
# default 4 warps (32 elements a thread per tile, no register spills).
_GPU_BLOCK_ELEMENTS = 4096
_GPU_MAX_BLOCK_COLS = 128


def mixed_sum_reference(weights: jax.Array, candidates: jax.Array) -> jax.Array:
    """Pure-jnp weighted sum of candidate activations.

    Args:
      weights: ``(E, K)`` weight of op ``k`` on incoming edge ``e``.
      candidates: ``(E, K, B, H, W, C)`` output of op ``k`` on edge ``e`` (any trailing
        activation shape works).

    Returns:
      ``sum_{e,k} weights[e, k] * candidates[e, k]``, shape ``candidates.shape[2:]``,
      dtype ``result_type(weights, candidates)``.
    """
    # HIGHEST: on GPU/TPU the default f32 dot precision may round to bf16/tf32, which
    # would make this a poor reference.
    return jnp.einsum(
        "ek,ek...->...", weights, candidates, precision=lax.Precision.HIGHEST
    )


class _Config(NamedTuple):
    """Static (hashable) settings of one kernel launch."""

    target: str  # "tpu" or "gpu": which kernel variant and block specs
    block_rows: int | None
    block_cols: int | None
    interpret: bool


def mixed_sum(
    weights: jax.Array,
    candidates: jax.Array,
    *,
    block_rows: int | None = None,
    block_cols: int | None = None,
    interpret: bool | None = None,
) -> jax.Array:
    """Fused Pallas version of :func:`mixed_sum_reference`, differentiable.

    Each candidate tile is read once and the output tile written once; the partial sums
    stay on chip. Gradients (a custom VJP, plain jnp) are
    ``d candidates[e, k] = weights[e, k] * g`` and
    ``d weights[e, k] = sum(g * candidates[e, k])``. Works under ``jit``, ``grad`` and
    ``vmap`` (``pallas_call`` batches by adding a grid dimension, so unbatched operands
    are not copied).

    Verified in interpret mode on CPU (both variants) and compiled through Triton on an
    H200 (see the module docstring); the TPU (Mosaic) path has not been compiled.

    Args:
      weights: ``(E, K)`` op weights (e.g. softmax of the architecture parameters).
      candidates: ``(E, K, B, H, W, C)`` candidate activations; float dtypes (bf16
        candidates are read as bf16 and accumulated in float32).
      block_rows: rows of the 2-D candidate view per program (see the module docstring).
        None: 256 on TPU, ``4096 / block_cols`` on GPU. A given value must be a multiple
        of 8 on TPU (16 for bf16 candidates, Mosaic's sublane tiling) and a power of
        two on GPU; it is clipped to the array.
      block_cols: columns per program. None: the whole width up to 512 (TPU) or 128
        (GPU). A given value must be a multiple of 128 on TPU and a power of two on GPU.
      interpret: run the Pallas interpreter. None: interpret on CPU
        (``jax.default_backend() == "cpu"``), compile otherwise.

    Returns:
      ``(B, H, W, C)`` array of dtype ``result_type(weights, candidates)``.
    """
    _check_shapes(weights, candidates)
    backend = jax.default_backend()
    if interpret is None:
        interpret = backend == "cpu"
    # The interpreter runs either variant; on CPU use the TPU-style one (no masks).
    target = "gpu" if backend in ("gpu", "cuda", "rocm") else "tpu"
    return _mixed_sum(_Config(target, block_rows, block_cols, bool(interpret)),
                      weights, candidates)


def _check_shapes(weights, candidates):
    if weights.ndim != 2:
        raise ValueError(f"weights must be (E, K), got shape {weights.shape}")
    if candidates.ndim < 3 or candidates.shape[:2] != weights.shape:
        raise ValueError(
            f"candidates must be (E, K, ...) with (E, K) = {weights.shape}, "
            f"got shape {candidates.shape}"
        )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _mixed_sum(cfg: _Config, weights, candidates):
    return _pallas_mixed_sum(cfg, weights, candidates)


def _mixed_sum_fwd(cfg, weights, candidates):
    return _pallas_mixed_sum(cfg, weights, candidates), (weights, candidates)


def _mixed_sum_bwd(cfg, residuals, g):
    del cfg
    weights, candidates = residuals
    expand = (...,) + (None,) * (candidates.ndim - 2)
    d_candidates = (weights[expand] * g[None, None]).astype(candidates.dtype)
    d_weights = jnp.einsum(
        "...,ek...->ek", g, candidates, precision=lax.Precision.HIGHEST
    ).astype(weights.dtype)
    return d_weights, d_candidates


_mixed_sum.defvjp(_mixed_sum_fwd, _mixed_sum_bwd)


def _view_2d(feature_shape: tuple[int, ...]) -> tuple[int, int]:
    """The free 2-D (rows, cols) view of one candidate activation."""
    size = 1
    for d in feature_shape:
        size *= d
    if size % _LANES == 0:
        return size // _LANES, _LANES
    return size // feature_shape[-1], feature_shape[-1]


def _block_shape(cfg: _Config, rows: int, cols: int) -> tuple[int, int]:
    if cfg.target == "gpu":
        # Triton tensors must have power-of-two sizes; blocks may overhang (masked).
        for name, b in (("block_rows", cfg.block_rows), ("block_cols", cfg.block_cols)):
            if b is not None and (b < 1 or b & (b - 1)):
                raise ValueError(f"{name} must be a power of two on GPU, got {b}")
        bc = cfg.block_cols or min(pl.next_power_of_2(cols), _GPU_MAX_BLOCK_COLS)
        br = cfg.block_rows or max(1, _GPU_BLOCK_ELEMENTS // bc)
        return min(br, pl.next_power_of_2(rows)), min(bc, pl.next_power_of_2(cols))
    # Mosaic: the last two block dims must be multiples of (8, 128) or the full dims.
    if cfg.block_rows is not None and (cfg.block_rows < 1 or cfg.block_rows % 8):
        raise ValueError(f"block_rows must be a multiple of 8 on TPU, got {cfg.block_rows}")
    if cfg.block_cols is not None and (cfg.block_cols < 1 or cfg.block_cols % _LANES):
        raise ValueError(
            f"block_cols must be a multiple of 128 on TPU, got {cfg.block_cols}"
        )
    br = min(cfg.block_rows or _TPU_BLOCK_ROWS, rows)
    bc = min(cfg.block_cols or _TPU_MAX_BLOCK_COLS, cols)
    return br, bc


def _kernel(w_ref, c_ref, o_ref, *, num_candidates, acc_dtype, masked_shape):
    """One (rows, cols) output tile: sum_n w[n] * c[n] over all candidates n.

    The loop over candidates is unrolled (NB201 has at most 3 x 5 per node); every
    candidate tile is read exactly once and the output tile is written once.
    """
    br, bc = o_ref.shape
    if masked_shape is not None:
        rows, cols = masked_shape
        row = pl.program_id(0) * br + lax.broadcasted_iota(jnp.int32, (br, bc), 0)
        col = pl.program_id(1) * bc + lax.broadcasted_iota(jnp.int32, (br, bc), 1)
        mask = (row < rows) & (col < cols)
    acc = None
    for n in range(num_candidates):
        if masked_shape is None:
            tile = c_ref[n]
        else:
            # A traced index: the interpreter's masked load cannot take a Python int.
            tile = pltriton.load(c_ref.at[jnp.int32(n)], mask=mask)
        term = w_ref[n].astype(acc_dtype) * tile.astype(acc_dtype)
        acc = term if acc is None else acc + term
    out = acc.astype(o_ref.dtype)
    if masked_shape is None:
        o_ref[...] = out
    else:
        pltriton.store(o_ref, out, mask=mask)


def _pallas_mixed_sum(cfg: _Config, weights, candidates):
    num_edges, num_ops = weights.shape
    feature_shape = candidates.shape[2:]
    out_dtype = jnp.result_type(weights.dtype, candidates.dtype)
    acc_dtype = jnp.promote_types(out_dtype, jnp.float32)
    num_candidates = num_edges * num_ops
    rows, cols = _view_2d(feature_shape)
    br, bc = _block_shape(cfg, rows, cols)

    flat_weights = weights.reshape(num_candidates).astype(acc_dtype)
    views = candidates.reshape(num_candidates, rows, cols)

    candidate_spec = pl.BlockSpec((num_candidates, br, bc), lambda i, j: (0, i, j))
    out_spec = pl.BlockSpec((br, bc), lambda i, j: (i, j))
    if cfg.target == "tpu":
        weight_spec = pl.BlockSpec(memory_space=pltpu.SMEM)
        compiler_params = pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel")
        )
        masked_shape = None
    else:
        weight_spec = pl.BlockSpec((num_candidates,), lambda i, j: (0,))
        compiler_params = pltriton.CompilerParams()
        masked_shape = (rows, cols)

    kernel = functools.partial(
        _kernel,
        num_candidates=num_candidates,
        acc_dtype=acc_dtype,
        masked_shape=masked_shape,
    )
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((rows, cols), out_dtype),
        grid=(pl.cdiv(rows, br), pl.cdiv(cols, bc)),
        in_specs=[weight_spec, candidate_spec],
        out_specs=out_spec,
        compiler_params=compiler_params,
        interpret=cfg.interpret,
        name="mixed_sum",
    )(flat_weights, views)
    return out.reshape(feature_shape)
