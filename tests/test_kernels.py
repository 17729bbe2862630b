"""Pallas kernels against their pure-jnp references, in interpret mode (CPU).

Both variants of ``mixed_sum`` -- the TPU one (SMEM weights, unmasked partial blocks) and
the GPU one (masked Triton loads/stores, power-of-two blocks) -- run through the Pallas
interpreter here; neither is compiled for a real accelerator by this suite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas.kernels import mixed_op

# (E, K, B, H, W, C) and explicit blocks. The 2-D candidate view is (M/128, 128) when
# M = B*H*W*C is a multiple of 128, else (B*H*W, C).
SHAPES = [
    # lane-dense view (8, 128), one block
    ((2, 5, 2, 4, 4, 16), None, None),
    # lane-dense view (20, 128): 20 rows over blocks of 8 -> masked/partial last block
    ((3, 5, 5, 4, 4, 32), 8, None),
    # (B*H*W, C) = (50, 3) view: neither dim divisible by the block
    ((1, 4, 2, 5, 5, 3), 8, None),
]


def _inputs(shape, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal(shape[:2]).astype(dtype)
    candidates = rng.standard_normal(shape).astype(dtype)
    return jnp.asarray(weights), jnp.asarray(candidates)


def _variant(target, block_rows=None, block_cols=None):
    """mixed_sum with the given kernel variant, in interpret mode."""
    cfg = mixed_op._Config(target, block_rows, block_cols, True)
    return lambda w, c: mixed_op._mixed_sum(cfg, w, c)


def _assert_close(actual, expected, rtol):
    # Kernel and einsum add the E*K terms in different orders; where the terms cancel
    # the result is near zero and only an absolute bound (relative to the terms'
    # scale, here O(1)) is meaningful.
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol,
                               atol=rtol)


@pytest.mark.parametrize("target", ["tpu", "gpu"])
@pytest.mark.parametrize("shape,block_rows,block_cols", SHAPES)
def test_forward_matches_reference_float32(target, shape, block_rows, block_cols):
    weights, candidates = _inputs(shape)
    out = _variant(target, block_rows, block_cols)(weights, candidates)
    ref = mixed_op.mixed_sum_reference(weights, candidates)
    assert out.shape == shape[2:] and out.dtype == jnp.float32
    _assert_close(out, ref, rtol=1e-6)


def test_public_entry_point_and_column_tiling():
    # interpret=None on CPU -> interpreter; block_cols=2 tiles the C=3 columns too.
    weights, candidates = _inputs(SHAPES[2][0], seed=1)
    ref = mixed_op.mixed_sum_reference(weights, candidates)
    _assert_close(mixed_op.mixed_sum(weights, candidates), ref, rtol=1e-6)
    _assert_close(_variant("gpu", 16, 2)(weights, candidates), ref, rtol=1e-6)


@pytest.mark.parametrize("target", ["tpu", "gpu"])
def test_forward_matches_reference_float64(target):
    with jax.enable_x64(True):
        weights, candidates = _inputs(SHAPES[2][0], dtype=np.float64)
        out = _variant(target, 8)(weights, candidates)
        ref = mixed_op.mixed_sum_reference(weights, candidates)
        assert out.dtype == jnp.float64
        _assert_close(out, ref, rtol=1e-12)


@pytest.mark.parametrize("target", ["tpu", "gpu"])
def test_gradients_match_reference(target):
    weights, candidates = _inputs(SHAPES[1][0], seed=2)
    probe = jnp.asarray(np.random.default_rng(3).standard_normal(SHAPES[1][0][2:]),
                        jnp.float32)

    def loss(fn):
        return lambda w, c: jnp.sum(jnp.sin(fn(w, c)) * probe)

    got = jax.grad(loss(_variant(target, 8)), argnums=(0, 1))(weights, candidates)
    want = jax.grad(loss(mixed_op.mixed_sum_reference), argnums=(0, 1))(
        weights, candidates
    )
    # d weights sums 320 products per entry; rounding grows with that count.
    _assert_close(got[0], want[0], rtol=1e-5)
    _assert_close(got[1], want[1], rtol=1e-6)


def test_jit_and_vmap_over_weights():
    shape = SHAPES[2][0]
    _, candidates = _inputs(shape)
    batch = jnp.asarray(np.random.default_rng(4).standard_normal((3, *shape[:2])),
                        jnp.float32)
    fn = jax.jit(lambda w, c: mixed_op.mixed_sum(w, c, block_rows=8))
    out = jax.vmap(fn, in_axes=(0, None))(batch, candidates)
    assert out.shape == (3, *shape[2:])
    for s in range(3):
        _assert_close(out[s], mixed_op.mixed_sum_reference(batch[s], candidates),
                      rtol=1e-6)

    # The custom VJP under vmap: per-architecture weight gradients.
    def loss(w):
        return jnp.sum(fn(w, candidates) ** 2)

    def ref_loss(w):
        return jnp.sum(mixed_op.mixed_sum_reference(w, candidates) ** 2)

    _assert_close(jax.vmap(jax.grad(loss))(batch), jax.vmap(jax.grad(ref_loss))(batch),
                  rtol=1e-5)


def test_bad_shapes_and_blocks_are_rejected():
    weights, candidates = _inputs(SHAPES[0][0])
    with pytest.raises(ValueError, match="candidates must be"):
        mixed_op.mixed_sum(weights[:1], candidates)
    with pytest.raises(ValueError, match="power of two"):
        _variant("gpu", 6)(weights, candidates)
    with pytest.raises(ValueError, match="multiple of 8"):
        _variant("tpu", 4)(weights, candidates)
