"""``jnas.prng``: flat draws reshaped are exactly ``jax.random``'s draws."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas import prng

SHAPES = [(), (3,), (4, 5), (2, 3, 4, 5), (5, 6, 3, 3, 4, 4)]


@pytest.fixture(params=[True, False], ids=["partitionable", "legacy"])
def threefry_mode(request):
    old = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", request.param)
    yield request.param
    jax.config.update("jax_threefry_partitionable", old)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey], ids=["typed", "raw"])
def test_same_values_as_jax_random(threefry_mode, shape, make_key):
    key = make_key(7)
    np.testing.assert_array_equal(prng.normal(key, shape), jax.random.normal(key, shape))
    np.testing.assert_array_equal(prng.normal(key, shape, jnp.float16), jax.random.normal(key, shape, jnp.float16))
    np.testing.assert_array_equal(prng.uniform(key, shape, jnp.float32, -2.0, 3.0),
                                  jax.random.uniform(key, shape, jnp.float32, -2.0, 3.0))
    keys = jax.random.split(key, 3)
    np.testing.assert_array_equal(jax.vmap(lambda k: prng.normal(k, shape))(keys),
                                  jax.vmap(lambda k: jax.random.normal(k, shape))(keys))
    assert prng.normal(key, list(shape)).shape == shape


def test_draws_differ_by_key():
    a, b = prng.uniform(jax.random.key(0), (4, 4)), prng.uniform(jax.random.key(1), (4, 4))
    assert not np.array_equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) < 1.0
