"""jnas.xla_options: the CPU compiler option is accepted, changes no result, and steps aside."""

import jax
import jax.numpy as jnp
import numpy as np

from jnas import xla_options


def test_cpu_gets_options_other_backends_none(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert xla_options.compiler_options("cpu") == xla_options.CPU_COMPILER_OPTIONS
    assert xla_options.compiler_options("gpu") is None
    assert xla_options.compiler_options("tpu") is None


def test_users_xla_flag_wins(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_convolution")
    assert xla_options.compiler_options("cpu") is None


def test_convolution_and_gradient_unchanged_by_the_option():
    key = jax.random.key(0)
    x = jax.random.normal(key, (4, 8, 8, 3))
    w = jax.random.normal(jax.random.fold_in(key, 1), (3, 3, 3, 5))

    def loss(w, x):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jnp.tanh(y) ** 2)

    f = jax.value_and_grad(loss)
    plain = jax.jit(f)(w, x)
    with_options = xla_options.jit(f)(w, x)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(with_options)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
