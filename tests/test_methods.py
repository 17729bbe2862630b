"""PC-DARTS and β-DARTS: the partial-channel cell against a hand-written per-edge
reference, edge normalization, the warm-up and the beta-decay regularizer against
hand-computed updates, and the methods end to end through the CLI."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jnas.cli import main
from jnas.search import darts
from jnas.spaces import nb201 as space
from jnas.supernet import nb201 as supernet
from test_cli import TINY, assert_usage_error, run_cli
from test_darts import NUM_CLASSES, cell_net, make_batch
from test_supernet import _ref_op, enable_x64

CELL_TOL = dict(rtol=1e-10, atol=1e-10)


def _torch_style_channel_shuffle(x, groups):
    """PC-DARTS's channel_shuffle, written for NCHW and applied to NHWC via transposes."""
    nchw = np.transpose(x, (0, 3, 1, 2))
    b, c, h, w = nchw.shape
    out = nchw.reshape(b, groups, c // groups, h, w).transpose(0, 2, 1, 3, 4).reshape(b, c, h, w)
    return np.transpose(out, (0, 2, 3, 1))


def _ref_pc_cell(w1, w3, h0, arch_weights, edge_weights, k):
    """PC-DARTS's cell, edge by edge: op on the first C/K channels, concat, shuffle, weigh."""
    c = h0.shape[-1]
    p = c // k
    nodes = [h0]
    for j in range(1, 4):
        total = 0.0
        for e, (src, dst) in enumerate(space.EDGES):
            if dst != j:
                continue
            x = nodes[src]
            mixed = sum(arch_weights[e, o] * _ref_op(op, x[..., :p], w1[e], w3[e]) for o, op in enumerate(space.OPS))
            edge_out = jnp.concatenate([mixed, x[..., p:]], axis=-1)
            nchw = jnp.transpose(edge_out, (0, 3, 1, 2))
            b, _, h, w = nchw.shape
            shuffled = nchw.reshape(b, k, p, h, w).transpose(0, 2, 1, 3, 4).reshape(b, c, h, w)
            total = total + edge_weights[e] * jnp.transpose(shuffled, (0, 2, 3, 1))
        nodes.append(total)
    return nodes[3]


@pytest.mark.parametrize("c, k", [(4, 2), (8, 4), (3, 3)])
def test_shuffle_matrix_is_pcdarts_channel_shuffle(c, k):
    x = np.random.default_rng(0).standard_normal((2, 3, 3, c))
    np.testing.assert_array_equal(x @ supernet.shuffle_matrix(c, k), _torch_style_channel_shuffle(x, k))


def test_edge_softmax_normalizes_each_nodes_incoming_edges():
    beta = np.asarray([0.3, -1.0, 2.0, 0.5, 0.1, -0.4])
    got = np.asarray(supernet.edge_softmax(jnp.asarray(beta)))
    for node in (1, 2, 3):
        idx = [e for e, (_, dst) in enumerate(space.EDGES) if dst == node]
        np.testing.assert_allclose(got[idx], np.exp(beta[idx]) / np.exp(beta[idx]).sum(), rtol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_partial_channel_cell_matches_reference(k):
    with enable_x64():
        c, p = 8, 8 // k
        kw1, kw3, kx, ka, kb, kc = jax.random.split(jax.random.key(k), 6)
        w1 = jax.random.normal(kw1, (6, p, p), jnp.float64) / np.sqrt(p)
        w3 = jax.random.normal(kw3, (6, 3, 3, p, p), jnp.float64) / np.sqrt(9 * p)
        h0 = jax.random.normal(kx, (2, 5, 6, c), jnp.float64)
        weights = jax.nn.softmax(jax.random.normal(ka, (6, 5), jnp.float64), axis=-1)
        edge_weights = supernet.edge_softmax(jax.random.normal(kb, (6,), jnp.float64))
        ct = jax.random.normal(kc, h0.shape, jnp.float64)

        got = jax.jit(supernet.cell)(w1, w3, h0, weights, edge_weights)
        want = _ref_pc_cell(w1, w3, h0, weights, edge_weights, k)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), **CELL_TOL)

        loss = lambda f: (lambda *a: jnp.sum(ct * f(*a)))
        ref = lambda w1, w3, h0, a, b: _ref_pc_cell(w1, w3, h0, a, b, k)
        g = jax.jit(jax.grad(loss(supernet.cell), argnums=(0, 1, 2, 3, 4)))(w1, w3, h0, weights, edge_weights)
        r = jax.jit(jax.grad(loss(ref), argnums=(0, 1, 2, 3, 4)))(w1, w3, h0, weights, edge_weights)
        for name, a, b in zip(("w1", "w3", "h0", "arch_weights", "edge_weights"), g, r):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), **CELL_TOL, err_msg=name)


def test_pcdarts_supernet_has_k_times_smaller_cell_kernels_and_runs():
    cfg = supernet.SupernetConfig(channels=8, cells=1, num_classes=3, in_channels=1, image_size=8, partial_channels=4)
    net = supernet.search_network(cfg, edge_normalization=True)
    params = net.init(jax.random.key(0))
    assert params["stages"][0]["w3"].shape == (1, 6, 3, 3, 2, 2)
    assert params["stages"][2]["w1"].shape == (1, 6, 8, 8)  # 4C = 32 channels, 8 through the ops
    arch = net.init_arch(jax.random.key(1))
    assert set(arch) == {"alpha", "beta"} and arch["beta"].shape == (6,)
    logits = jax.jit(net.apply)(params, jnp.ones((4, 8, 8, 1)), arch)
    assert logits.shape == (4, 3) and bool(jnp.all(jnp.isfinite(logits)))
    space.parse(net.derive(arch))


@pytest.mark.parametrize("kwargs", [dict(partial_channels=3), dict(partial_channels=0)])
def test_partial_channels_must_divide_channels(kwargs):
    with pytest.raises(ValueError, match="partial_channels"):
        supernet.SupernetConfig(channels=8, **kwargs)


# --------------------------------------------------------------------------- the step


NET_CFG = supernet.SupernetConfig(channels=2, cells=1, num_classes=NUM_CLASSES, in_channels=1, image_size=8)


def _cell_params(seed=0, c=3):
    rng = np.random.default_rng(seed)
    return {
        "w1": jnp.asarray(0.6 * rng.standard_normal((6, c, c)), jnp.float32),
        "w3": jnp.asarray(0.3 * rng.standard_normal((6, 3, 3, c, c)), jnp.float32),
        "head": jnp.asarray(rng.standard_normal((c, NUM_CLASSES)), jnp.float32),
        "b": jnp.asarray(0.1 * rng.standard_normal((NUM_CLASSES,)), jnp.float32),
    }


def _state(search, alpha, seed=0):
    params = _cell_params(seed)
    return darts.SearchState(params, alpha, search.w_tx.init(params), search.a_tx.init(alpha),
                             jax.random.key(0), jnp.zeros((), jnp.int32))


def test_beta_decay_loss_and_gradient_by_hand():
    alpha = jnp.asarray(np.random.default_rng(3).standard_normal((6, 5)), jnp.float32)
    want = np.mean(np.log(np.exp(np.asarray(alpha, np.float64)).sum(-1)))
    np.testing.assert_allclose(darts.beta_decay_loss(alpha), want, rtol=1e-6)
    # d/dα mean_e logsumexp(α_e) = softmax(α_e) / E
    np.testing.assert_allclose(jax.grad(darts.beta_decay_loss)(alpha), jax.nn.softmax(alpha, -1) / 6, rtol=1e-6)


def test_beta_decay_schedule_is_linear_in_epochs():
    lam = [float(darts.beta_decay_weight(step, 50.0, steps_per_epoch=10, epochs=5)) for step in (0, 9, 10, 25, 49)]
    assert lam == [0.0, 0.0, 10.0, 20.0, 40.0]


@pytest.mark.parametrize("order", [1, 2])
def test_beta_darts_alpha_update_adds_the_regularizer_gradient(order):
    """One β-DARTS step = Adam on (DARTS's α gradient + λ_e softmax(α)/E)."""
    alpha = jnp.asarray(0.5 * np.random.default_rng(1).standard_normal((6, 5)), jnp.float32)
    train, val = make_batch(10), make_batch(11)
    plain = darts.make_darts(NET_CFG, darts.DartsConfig(order=order), 8, apply_fn=cell_net)
    beta = darts.make_darts(NET_CFG, darts.DartsConfig(order=order, beta_decay=40.0), 8, apply_fn=cell_net,
                            steps_per_epoch=2)
    state = _state(plain, alpha)._replace(step=jnp.asarray(4, jnp.int32))  # epoch 2 of 4: λ_e = 20
    # DARTS's own α gradient, recovered from one Adam step of the plain search is awkward;
    # recompute it directly instead, as the plain step does
    new_plain, m_plain = jax.jit(plain.step)(state, train, val)
    new_beta, m_beta = jax.jit(beta.step)(state, train, val)
    assert float(m_plain["reg_weight"]) == 0.0 and float(m_beta["reg_weight"]) == 20.0
    np.testing.assert_allclose(new_beta.params["w3"], new_plain.params["w3"], rtol=1e-6)  # weights untouched

    # the α gradient the plain step used, via its Adam moment: m1 = (1 - b1) * (g + wd α)
    b1 = darts.DartsConfig.arch_betas[0]
    mu_plain = optax.tree_utils.tree_get(new_plain.a_opt_state, "mu")
    mu_beta = optax.tree_utils.tree_get(new_beta.a_opt_state, "mu")
    reg = 20.0 * jax.nn.softmax(alpha, -1) / 6
    np.testing.assert_allclose((mu_beta - mu_plain) / (1 - b1), reg, rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(new_beta.arch_params - new_plain.arch_params).max()) > 1e-6


def test_warmup_freezes_alpha_and_its_optimizer_then_releases_them():
    chex.clear_trace_counter()
    search = darts.make_darts(NET_CFG, darts.DartsConfig(arch_warmup_steps=2), 6, apply_fn=cell_net)

    def warm_step(state, train, val):
        return search.step(state, train, val)

    step = jax.jit(chex.assert_max_traces(warm_step, n=1))
    alpha = jnp.asarray(0.5 * np.random.default_rng(2).standard_normal((6, 5)), jnp.float32)
    state = _state(search, alpha)
    a_opt0 = jax.tree.map(np.asarray, state.a_opt_state)
    w3_0 = np.asarray(state.params["w3"])
    updated = []
    for k in range(4):
        state, metrics = step(state, make_batch(20 + k), make_batch(40 + k))
        updated.append(float(metrics["arch_updated"]))
        if k < 2:
            np.testing.assert_array_equal(state.arch_params, alpha)
            for a, b in zip(jax.tree.leaves(state.a_opt_state), jax.tree.leaves(a_opt0)):
                np.testing.assert_array_equal(a, b)
            assert np.isfinite(float(metrics["val_loss"]))
    assert updated == [0.0, 0.0, 1.0, 1.0]
    assert float(jnp.abs(state.arch_params - alpha).max()) > 1e-6
    assert float(np.abs(np.asarray(state.params["w3"]) - w3_0).max()) > 1e-6


# --------------------------------------------------------------------------- CLI


def test_pcdarts_with_beta_decay_end_to_end_with_diagnostics(tmp_path, capsys):
    """PC-DARTS (K=2, edge normalization, warm-up) plus β-decay, Hessian every epoch."""
    out = tmp_path / "run"
    argv = ["search", "--method", "pcdarts", "--beta-decay", "50", "--epochs", "2", "--limit", "64",
            "--out", str(out), "--hessian-every", "1", "--hessian-iters", "5", *TINY,
            "--channels", "4", "--partial-channels", "2"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "pcdarts"
    assert result["method_options"] == {"partial_channels": 2, "edge_normalization": True, "arch_warmup_epochs": 1,
                                        "arch_lr": 6e-4, "beta_decay": 50.0}
    space.parse(result["genotype"])
    first, last = result["history"]
    for record in (first, last):
        assert np.isfinite(record["hessian_eigenvalue"])
        assert len(record["param_free_weight"]) == 6
        assert record["skip_count"] == record["genotype"].count("skip_connect")
        w = np.asarray(record["arch_weights"])  # none + skip + avg pool, from the recorded weights
        np.testing.assert_allclose(record["param_free_weight"], w[:, [0, 1, 4]].sum(-1), rtol=1e-6)
    # epoch 0 is the warm-up (α, β frozen), epoch 1 trains them with λ_1 = 50 * 1/2
    assert first["arch_updated_steps"] == 0 and last["arch_updated_steps"] == last["steps"] > 0
    assert first["reg_weight"] == 0.0 and last["reg_weight"] == 25.0
    assert first["arch_weights"] != last["arch_weights"]
    assert first["edge_weights"] != result["edge_weights"]


def test_method_defaults_are_the_published_ones():
    from jnas.search.runner import SearchConfig

    assert SearchConfig(method="pcdarts").method_options(50) == {
        "partial_channels": 4, "edge_normalization": True, "arch_warmup_epochs": 15, "arch_lr": 6e-4, "beta_decay": 0.0}
    assert SearchConfig(method="beta-darts").method_options(50)["beta_decay"] == 50.0
    assert SearchConfig(method="darts").method_options(50) == {
        "partial_channels": 1, "edge_normalization": False, "arch_warmup_epochs": 0, "arch_lr": 3e-4, "beta_decay": 0.0}


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--method", "pcdarts", "--channels", "6"], "must divide --channels=6"),
        (["--method", "pcdarts", "--partial-channels", "3", "--channels", "4"], "--partial-channels must divide"),
        (["--method", "darts", "--partial-channels", "2"], "PC-DARTS option"),
        (["--method", "darts", "--beta-decay", "-1"], "--beta-decay"),
        (["--method", "darts", "--arch-lr", "0"], "--arch-lr"),
        (["--method", "darts", "--arch-lr", "nan"], "--arch-lr"),
        (["--method", "gdas"], "unknown search method 'gdas'"),
    ],
)
def test_method_options_bad_input(argv, fragment, tmp_path, capsys):
    code, _, err = run_cli(["search", *argv, "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert_usage_error(code, err, fragment)
    assert not (tmp_path / "o").exists()


def test_main_is_importable():
    assert callable(main)
