"""Diagnostics: the Hessian's dominant eigenvalue against dense Hessians, and the
op-weight statistics against hand counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas import diagnostics
from jnas.search import darts
from test_darts import cell_net, cell_net_params, make_batch
from test_supernet import enable_x64


def test_power_iteration_on_a_known_quadratic():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    eigs = np.asarray([5.0, 2.0, 1.0, 0.5, -0.3, 0.1])
    a = q @ np.diag(eigs) @ q.T
    with enable_x64():
        loss = lambda x: 0.5 * x @ jnp.asarray(a) @ x + jnp.sum(x**3) * 0.0
        eig, vec = diagnostics.dominant_eigenvalue(loss, jnp.zeros(6), jax.random.key(0), iters=200, tol=1e-12)
        assert abs(float(eig) - 5.0) < 1e-8
        assert abs(abs(float(vec @ q[:, 0])) - 1.0) < 1e-6


def test_hvp_matches_dense_hessian_vector_product():
    with enable_x64():
        loss = lambda t: jnp.sum(jnp.sin(t["a"])) * jnp.sum(t["b"] ** 2) + jnp.sum(t["a"] ** 3 * t["b"][:2])
        point = {"a": jnp.asarray([0.3, -0.7]), "b": jnp.asarray([1.5, 0.2, -0.4])}
        v = {"a": jnp.asarray([1.0, 2.0]), "b": jnp.asarray([0.5, -1.0, 0.25])}
        dense = diagnostics.dense_hessian(loss, point)
        got = diagnostics.hvp(loss, point, v)
        flat_v = jnp.concatenate([v["a"], v["b"]])
        np.testing.assert_allclose(jnp.concatenate([got["a"], got["b"]]), dense @ flat_v, rtol=1e-12)


def test_dominant_eigenvalue_of_a_cell_val_loss_matches_dense_hessian():
    """The real thing, small: ∇²_α of the loss of a search cell (the supernet's own,
    with its custom-VJP convolutions) plus a linear head; 30 α entries, float64."""
    with enable_x64():
        params = cell_net_params(0, jnp.float64)
        batch = make_batch(1, jnp.float64, batch=6)
        alpha = jnp.asarray(0.3 * np.random.default_rng(1).standard_normal((6, 5)))

        def loss(a):
            return darts.cross_entropy(cell_net(params, batch.images, jax.nn.softmax(a, -1)), batch.labels)

        dense = np.asarray(diagnostics.dense_hessian(loss, alpha))
        np.testing.assert_allclose(dense, dense.T, atol=1e-10)
        eigs = np.linalg.eigvalsh(dense)
        dominant = eigs[np.argmax(np.abs(eigs))]
        got, _ = jax.jit(lambda a: diagnostics.dominant_eigenvalue(loss, a, jax.random.key(2), iters=500, tol=1e-10))(alpha)
        assert abs(float(got) - dominant) <= 1e-5 * abs(dominant), (float(got), eigs[-3:], eigs[:3])
        assert abs(dominant) > 1e-6  # not a trivially zero Hessian


def test_parameter_free_weight_and_skip_count_by_hand():
    ops = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
    w = np.asarray([[0.1, 0.2, 0.3, 0.3, 0.1], [0.0, 0.0, 0.5, 0.5, 0.0]])
    np.testing.assert_allclose(diagnostics.parameter_free_weight(w, ops), [0.4, 0.0])
    with pytest.raises(ValueError, match="ops"):
        diagnostics.parameter_free_weight(w, ops[:4])
    assert diagnostics.skip_count("|skip_connect~0|+|skip_connect~0|none~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|") == 4
    darts_text = ("Genotype(normal=[('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 1)], normal_concat=[2], "
                  "reduce=[('skip_connect', 0)], reduce_concat=[2])")
    assert diagnostics.skip_count(darts_text) == 2
