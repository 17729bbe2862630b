"""``jax.random.uniform`` / ``normal`` drawn flat and reshaped: the same values, compiled fast.

XLA CPU's compile time for a threefry draw grows with the rank of its shape (the
counter is a linearised multi-dimensional iota inside one large fusion). Measured with
jaxlib 0.10.2 on the 2-core CPU, compile of one draw (``jax.jit(...).lower().compile()``):
``normal`` of shape ``(9216,)`` 0.11 s, ``(96, 96)`` 0.17 s, ``(6, 16, 96)`` 0.29 s,
``(6, 6, 16, 16)`` 1.05 s, ``(5, 6, 3, 3, 16, 16)`` 1.24 s (uniform: 1.4 s), and the same
draws made flat and reshaped 0.12-0.16 s each. The NAS-Bench-201 supernet's weights
(seven such tensors) took 6.0 s to initialise, most of a search's start-up.

With JAX's threefry (``jax_threefry_partitionable`` on or off) the bits of a draw are
a function of the flat element index, so these return exactly what ``jax.random``
returns for the same key and shape (``tests/test_prng.py`` checks it, under ``vmap``
too).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def uniform(key, shape, dtype=jnp.float32, minval=0.0, maxval=1.0):
    """``jax.random.uniform(key, shape, dtype, minval, maxval)``, drawn flat."""
    shape = tuple(shape)
    return jax.random.uniform(key, (math.prod(shape),), dtype, minval, maxval).reshape(shape)


def normal(key, shape, dtype=jnp.float32):
    """``jax.random.normal(key, shape, dtype)``, drawn flat."""
    shape = tuple(shape)
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)
