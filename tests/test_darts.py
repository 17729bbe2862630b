"""DARTS search steps: first-order updates against hand-written update formulas, the
second-order hypergradient against finite differences, and the compile properties.

Most tests run DARTS over a one-cell network (the real ``supernet.cell``, with its
custom-VJP convolutions, plus a linear head) passed as ``apply_fn``: the update logic
under test does not depend on the macro skeleton, and a full supernet step costs
15 s (first order) to 50 s (second order) of XLA compile on 2 CPU cores. One test runs
the real supernet step.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jnas.search import darts
from jnas.spaces import nb201 as space
from jnas.supernet import nb201 as supernet

try:
    from jax.experimental import enable_x64
except ImportError:  # newer jax: the config state itself is the context manager

    def enable_x64():
        return jax.enable_x64(True)


C = 3  # cell width
HW = 6  # cell input size
NUM_CLASSES = 3
TOTAL_STEPS = 4  # short cosine schedule, so lr(1) differs clearly from lr(0)
NET_CFG = supernet.SupernetConfig(channels=2, cells=1, num_classes=NUM_CLASSES, in_channels=1, image_size=8)
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"


def cell_net(params, images, weights):
    h = supernet.cell(params["w1"], params["w3"], images, weights)
    return jnp.mean(jax.nn.relu(h), axis=(1, 2)) @ params["head"] + params["b"]


def cell_net_params(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return {
        "w1": jnp.asarray(0.6 * rng.standard_normal((6, C, C)), dtype),
        "w3": jnp.asarray(0.3 * rng.standard_normal((6, 3, 3, C, C)), dtype),
        "head": jnp.asarray(rng.standard_normal((C, NUM_CLASSES)), dtype),
        "b": jnp.asarray(0.1 * rng.standard_normal((NUM_CLASSES,)), dtype),
    }


def make_batch(seed, dtype=jnp.float32, batch=4, shape=(HW, HW, C)):
    rng = np.random.default_rng(seed)
    return darts.Batch(
        jnp.asarray(rng.standard_normal((batch, *shape)), dtype),
        jnp.asarray(rng.integers(0, NUM_CLASSES, batch), jnp.int32),
    )


def make_state(search, params, alpha):
    return darts.SearchState(
        params=params,
        arch_params=alpha,
        w_opt_state=search.w_tx.init(params),
        a_opt_state=search.a_tx.init(alpha),
        key=jax.random.key(0),
        step=jnp.zeros((), jnp.int32),
    )


def initial_alpha(seed=1, dtype=jnp.float32):
    # larger than the reference 1e-3 init so the softmax is far from uniform
    return jnp.asarray(0.5 * np.random.default_rng(seed).standard_normal((6, 5)), dtype)


@pytest.fixture(scope="module")
def searches():
    """Order-1 and order-2 searches over the cell net, with their jitted steps (compiled once)."""
    chex.clear_trace_counter()
    search1 = darts.make_darts(NET_CFG, darts.DartsConfig(order=1), TOTAL_STEPS, apply_fn=cell_net)
    search2 = darts.make_darts(NET_CFG, darts.DartsConfig(order=2, hvp="exact"), TOTAL_STEPS, apply_fn=cell_net)

    # chex keys its trace counter by the wrapped function's source and call site, and both
    # steps are the same closure of make_darts: give each its own named wrapper
    def step_order_1(state, train, val):
        return search1.step(state, train, val)

    def step_order_2(state, train, val):
        return search2.step(state, train, val)

    return {
        1: (search1, jax.jit(chex.assert_max_traces(step_order_1, n=1))),
        2: (search2, jax.jit(chex.assert_max_traces(step_order_2, n=1))),
    }


# --------------------------------------------------------------------------- first order vs hand-written


def _cross_entropy(logits, labels):
    logp = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def _cosine_lr(step, cfg):
    return cfg.w_lr_min + (cfg.w_lr - cfg.w_lr_min) * 0.5 * (1 + math.cos(math.pi * step / TOTAL_STEPS))


def _reference_step(params, alpha, mom, m, v, t, train, val, lr, grad_clip, cfg):
    """One DARTS first-order step written out: weights (clip, +wd*w, Nesterov SGD), then α (Adam, coupled wd)."""
    tmap = jax.tree.map

    def train_loss(p):
        return _cross_entropy(cell_net(p, train.images, jax.nn.softmax(alpha, axis=-1)), train.labels)

    loss, g = jax.value_and_grad(train_loss)(params)
    norm = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(g)))
    g = tmap(lambda x: x * jnp.minimum(1.0, grad_clip / norm), g)
    g = tmap(lambda x, w: x + cfg.w_weight_decay * w, g, params)
    mom = tmap(lambda x, b: x + cfg.w_momentum * b, g, mom)  # PyTorch: buf = mu*buf + g (no dampening)
    step = tmap(lambda x, b: x + cfg.w_momentum * b, g, mom)  # Nesterov: g + mu*buf
    params = tmap(lambda w, s: w - lr * s, params, step)

    def val_loss(a):
        return _cross_entropy(cell_net(params, val.images, jax.nn.softmax(a, axis=-1)), val.labels)

    ga = jax.grad(val_loss)(alpha) + cfg.arch_weight_decay * alpha
    b1, b2 = cfg.arch_betas
    m = b1 * m + (1 - b1) * ga
    v = b2 * v + (1 - b2) * ga**2
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    alpha = alpha - cfg.arch_lr * m_hat / (jnp.sqrt(v_hat) + 1e-8)
    return params, alpha, mom, m, v, norm, loss


@pytest.mark.parametrize("grad_clip", [5.0, 0.05])
def test_first_order_two_steps_match_hand_written_updates(grad_clip, searches):
    cfg = darts.DartsConfig(order=1, grad_clip=grad_clip)
    if grad_clip == 5.0:
        search, step = searches[1]
    else:
        search = darts.make_darts(NET_CFG, cfg, TOTAL_STEPS, apply_fn=cell_net)
        step = jax.jit(search.step)
    params, alpha = cell_net_params(0), initial_alpha(1)
    state = make_state(search, params, alpha)
    reference = jax.jit(_reference_step, static_argnames="cfg")
    base = darts.DartsConfig(order=1)  # grad_clip travels as an array: one compile serves both cases
    zeros = jax.tree.map(jnp.zeros_like, params)
    mom, m, v = zeros, jnp.zeros_like(alpha), jnp.zeros_like(alpha)
    ref_params, ref_alpha = params, alpha
    for t, seeds in enumerate([(10, 11), (12, 13)]):
        train, val = make_batch(seeds[0]), make_batch(seeds[1])
        lr = _cosine_lr(t, cfg)
        ref_params, ref_alpha_new, mom, m, v, norm, ref_train_loss = reference(
            ref_params, ref_alpha, mom, m, v, t + 1, train, val, lr, grad_clip, cfg=base
        )
        # clip 5 leaves these gradients (norm < 1) alone; clip 0.05 really rescales them
        assert (float(norm) > grad_clip) == (grad_clip < 1)
        state, metrics = step(state, train, val)
        # float32, same math in a different XLA program: rounding differs at ~1e-7 relative;
        # 1e-5 leaves room for its growth through two steps, still far below any update (~1e-3)
        chex.assert_trees_all_close(state.params, ref_params, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.arch_params, ref_alpha_new, rtol=1e-5, atol=1e-7)
        # momentum_of reads the SGD trace: after step 1 it is the clipped gradient + wd * w
        chex.assert_trees_all_close(darts.momentum_of(state.w_opt_state, state.params), mom, rtol=1e-5, atol=1e-6)
        assert all(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(mom))
        np.testing.assert_allclose(optax.tree_utils.tree_get(state.a_opt_state, "mu"), m, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(optax.tree_utils.tree_get(state.a_opt_state, "nu"), v, rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(float(metrics["lr"]), lr, rtol=1e-6)
        np.testing.assert_allclose(float(metrics["train_loss"]), float(ref_train_loss), rtol=1e-5)
        assert int(state.step) == t + 1
        # α moved (the test can fail): Adam's first step is ~lr in size
        assert float(jnp.abs(ref_alpha_new - ref_alpha).max()) > 1e-4
        ref_alpha = ref_alpha_new
    assert _cosine_lr(1, cfg) < 0.9 * _cosine_lr(0, cfg)


# --------------------------------------------------------------------------- second order


def test_unrolled_weights_formula():
    with enable_x64():
        cfg = darts.DartsConfig(order=2)
        search = darts.make_darts(NET_CFG, cfg, TOTAL_STEPS, apply_fn=cell_net)
        params, alpha = cell_net_params(0, jnp.float64), initial_alpha(1, jnp.float64)
        buf = cell_net_params(5, jnp.float64)
        train = make_batch(10, jnp.float64)
        got = jax.jit(lambda p, a, b: darts.unrolled_weights(p, a, train, b, 0.3, cfg, search.loss))(params, alpha, buf)
        g = jax.jit(jax.grad(lambda p: _cross_entropy(cell_net(p, train.images, jax.nn.softmax(alpha, -1)), train.labels)))(
            params
        )
        want = jax.tree.map(lambda w, gw, b: w - 0.3 * (0.9 * b + gw + 5e-4 * w), params, g, buf)
        chex.assert_trees_all_close(got, want, rtol=1e-12, atol=1e-12)


def test_second_order_hypergradient_matches_finite_differences():
    """f(α) = L_val(w'(α), α) with w'(α) the unrolled SGD step; float64 central differences.

    ReLU kinks could spoil a difference quotient if a perturbation flipped the sign of
    some pre-activation; with random inputs and eps = 1e-5 that has probability ~1e-5
    per coordinate, and the seeds here are fixed, so the test is deterministic.
    """
    with enable_x64():
        cfg = darts.DartsConfig(order=2)
        search = darts.make_darts(NET_CFG, cfg, TOTAL_STEPS, apply_fn=cell_net)
        params, alpha = cell_net_params(0, jnp.float64), initial_alpha(1, jnp.float64)
        buf = jax.tree.map(lambda x: 0.1 * x, cell_net_params(5, jnp.float64))
        train, val = make_batch(10, jnp.float64), make_batch(11, jnp.float64)
        lr = 0.3  # a large virtual step, so the implicit (Hessian) term is large

        def f(a):
            w_prime = darts.unrolled_weights(params, a, train, buf, lr, cfg, search.loss)
            return search.loss(w_prime, a, val)[0]

        def explicit_only(a):  # the first-order term alone: w' held fixed
            w_prime = jax.lax.stop_gradient(darts.unrolled_weights(params, a, train, buf, lr, cfg, search.loss))
            return search.loss(w_prime, a, val)[0]

        loss, logits, grad = jax.jit(
            lambda a: darts.second_order_arch_grad(params, a, train, val, buf, lr, cfg, search.loss)
        )(alpha)
        assert grad.shape == (6, 5) and grad.dtype == jnp.float64 and logits.shape == (4, NUM_CLASSES)

        eps = 1e-5
        steps = eps * np.eye(30).reshape(30, 6, 5)
        points = jnp.concatenate([alpha[None], alpha + steps, alpha - steps])
        values = np.asarray(jax.jit(jax.vmap(f))(points))
        np.testing.assert_allclose(float(loss), values[0], rtol=1e-12)
        fd = ((values[1:31] - values[31:]) / (2 * eps)).reshape(6, 5)
        # central differences: truncation ~eps^2 and rounding ~1e-16/eps, both << 1e-5 of |grad|
        np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-5, atol=1e-7 * np.abs(fd).max())

        # the implicit term is not negligible: dropping it fails the comparison above by far
        explicit = jax.jit(jax.grad(explicit_only))(alpha)
        assert float(jnp.abs(explicit - grad).max()) > 1e-2 * float(jnp.abs(grad).max())


def test_order_two_step_uses_the_hypergradient_and_differs_from_order_one(searches):
    (search1, step1), (search2, step2) = searches[1], searches[2]
    params, alpha = cell_net_params(0), initial_alpha(1)
    train, val = make_batch(10), make_batch(11)
    s1, m1 = step1(make_state(search1, params, alpha), train, val)
    s2, m2 = step2(make_state(search2, params, alpha), train, val)
    # the weight step is identical; only the architecture gradient differs
    chex.assert_trees_all_close(s1.params, s2.params, rtol=1e-6, atol=1e-7)
    mu1 = optax.tree_utils.tree_get(s1.a_opt_state, "mu")
    mu2 = optax.tree_utils.tree_get(s2.a_opt_state, "mu")
    assert float(jnp.abs(mu1 - mu2).max()) > 1e-3 * float(jnp.abs(mu1).max())
    # order 2 feeds Adam the hypergradient at the updated weights, with the updated
    # momentum buffer and the lr of the step just taken
    cfg = darts.DartsConfig(order=2, hvp="exact")
    _, _, hyper = jax.jit(
        lambda p, a, buf: darts.second_order_arch_grad(p, a, train, val, buf, search2.lr_schedule(0), cfg, search2.loss)
    )(s2.params, alpha, darts.momentum_of(s2.w_opt_state, s2.params))
    b1 = cfg.arch_betas[0]
    np.testing.assert_allclose(mu2, (1 - b1) * (hyper + cfg.arch_weight_decay * alpha), rtol=1e-5, atol=1e-9)
    assert np.isfinite(float(m2["val_loss"]))
    # after a second step α differs too (Adam's first step is ~lr*sign(g), blind to magnitudes)
    s1, _ = step1(s1, make_batch(12), make_batch(13))
    s2, _ = step2(s2, make_batch(12), make_batch(13))
    assert float(jnp.abs(s1.arch_params - s2.arch_params).max()) > 1e-7


# --------------------------------------------------------------------------- momentum_of


def test_momentum_of_structure_and_zeros():
    """The non-zero trace after a step is checked in the first-order test; here, the empty cases."""
    search = darts.make_darts(NET_CFG, darts.DartsConfig(), TOTAL_STEPS, apply_fn=cell_net)
    params = cell_net_params(0)
    fresh = darts.momentum_of(search.w_tx.init(params), params)  # SGD trace, initialised to zero
    chex.assert_trees_all_equal_structs(fresh, params)
    chex.assert_trees_all_equal(fresh, jax.tree.map(jnp.zeros_like, params))
    # an optimizer without momentum: zeros shaped like params
    plain = darts.momentum_of(optax.sgd(0.1).init(params), params)
    chex.assert_trees_all_equal_structs(plain, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(plain, params)
    chex.assert_trees_all_equal(plain, jax.tree.map(jnp.zeros_like, params))
    # the trace it returns is the optimizer's own buffer (momentum, not Adam's mu)
    state = search.w_tx.init(params)
    got = darts.momentum_of(optax.tree_utils.tree_set(state, trace=params), params)
    chex.assert_trees_all_equal(got, params)


# --------------------------------------------------------------------------- compile properties


def test_no_recompile_across_steps_on_the_real_supernet():
    search = darts.make_darts(NET_CFG, darts.DartsConfig(order=1), TOTAL_STEPS)
    # init's structure, numpy values: supernet.init itself costs ~15 s of threefry compile here
    shapes = jax.eval_shape(search.init, jax.random.key(0))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes.params)
    state = make_state(search, params, supernet.init_arch_params(jax.random.key(1)))
    chex.assert_trees_all_equal_shapes_and_dtypes(
        (state.params, state.arch_params, state.w_opt_state, state.a_opt_state, state.step),
        (shapes.params, shapes.arch_params, shapes.w_opt_state, shapes.a_opt_state, shapes.step),
    )
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(search.step, n=1))
    alphas, lrs = [state.arch_params], []
    for t in range(3):
        batch = make_batch(20 + t, shape=(8, 8, 1))
        state, metrics = step(state, batch, make_batch(30 + t, shape=(8, 8, 1)))
        alphas.append(state.arch_params)
        lrs.append(float(metrics["lr"]))
        assert all(np.isfinite(float(v)) for v in metrics.values())
    assert int(state.step) == 3
    np.testing.assert_allclose(lrs, [_cosine_lr(t, darts.DartsConfig()) for t in range(3)], rtol=1e-6)
    assert all(float(jnp.abs(a - b).max()) > 0 for a, b in zip(alphas, alphas[1:]))


def test_no_recompile_across_steps_order_two(searches):
    search, step = searches[2]
    state = make_state(search, cell_net_params(0), initial_alpha(1))
    for t in range(3):
        state, _ = step(state, make_batch(40 + t), make_batch(50 + t))
    assert int(state.step) == 3


# --------------------------------------------------------------------------- genotype, config


def test_genotype_is_a_valid_arch_string():
    for seed in range(5):
        alpha = jax.random.normal(jax.random.key(seed), (6, 5))
        arch = darts.genotype(alpha)
        encoding = space.parse(arch)
        assert space.format_arch(encoding) == arch
        np.testing.assert_array_equal(encoding, np.argmax(np.asarray(alpha), axis=-1))


def test_genotype_all_skip():
    alpha = jnp.zeros((6, 5)).at[:, space.OPS.index("skip_connect")].set(1.0)
    assert darts.genotype(alpha) == ALL_SKIP
    alpha = supernet.init_arch_params(jax.random.key(0)).at[:, 1].add(0.1)
    assert darts.genotype(alpha) == ALL_SKIP


def test_arch_weights_is_softmax_per_edge():
    alpha = jax.random.normal(jax.random.key(0), (6, 5))
    w = darts.arch_weights(alpha)
    np.testing.assert_allclose(np.asarray(w).sum(-1), np.ones(6), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(w), np.asarray(jax.nn.softmax(alpha, axis=-1)), rtol=1e-6)


def test_finite_difference_hypergradient_is_darts_eq8_and_converges_to_exact(monkeypatch):
    """DARTS's central difference (ε = 0.01/||v||): Eq. 8 by hand, and the exact limit.

    At DARTS's radius (the weights move by 0.01 in norm) some ReLUs of this tiny network
    flip, so the quotient is off by about the size of the implicit term here; with the
    radius at 1e-3 none flip and it matches the exact hypergradient to ~1e-8.
    """
    with enable_x64():
        cfg = darts.DartsConfig(order=2)
        assert cfg.hvp == "finite_difference"
        search = darts.make_darts(NET_CFG, cfg, TOTAL_STEPS, apply_fn=cell_net)
        params, alpha = cell_net_params(0, jnp.float64), initial_alpha(1, jnp.float64)
        buf = jax.tree.map(lambda x: 0.1 * x, cell_net_params(5, jnp.float64))
        train, val = make_batch(10, jnp.float64), make_batch(11, jnp.float64)
        lr = 0.3
        args = (train, val, buf, lr, cfg, search.loss)
        loss_fd, logits_fd, fd = jax.jit(lambda a: darts.finite_difference_arch_grad(params, a, *args))(alpha)
        loss_ex, logits_ex, exact = jax.jit(lambda a: darts.second_order_arch_grad(params, a, *args))(alpha)
        np.testing.assert_allclose(float(loss_fd), float(loss_ex), rtol=1e-12)
        chex.assert_trees_all_close(logits_fd, logits_ex, rtol=1e-12)
        scale = float(jnp.abs(exact).max())

        # Eq. 8 by hand: g_α - ξ (∇_α L_train(w+) - ∇_α L_train(w-)) / 2ε
        w_prime = darts.unrolled_weights(params, alpha, train, buf, lr, cfg, search.loss)
        v, g_alpha = jax.grad(lambda w, a: search.loss(w, a, val)[0], argnums=(0, 1))(w_prime, alpha)
        eps = 0.01 / float(optax.tree.norm(v))
        grad_at = lambda sign: jax.grad(lambda a: search.loss(
            jax.tree.map(lambda p, d: p + sign * eps * d, params, v), a, train)[0])(alpha)
        want = g_alpha - lr * (grad_at(1.0) - grad_at(-1.0)) / (2 * eps)
        np.testing.assert_allclose(np.asarray(fd), np.asarray(want), rtol=1e-9, atol=1e-12 * scale)
        # the implicit term is large, and a smaller radius recovers it exactly
        assert float(jnp.abs(g_alpha - exact).max()) > 1e-2 * scale
        monkeypatch.setattr(darts, "HVP_R", 1e-3)
        _, _, fine = jax.jit(lambda a: darts.finite_difference_arch_grad(params, a, *args))(alpha)
        np.testing.assert_allclose(np.asarray(fine), np.asarray(exact), atol=1e-6 * scale)


def test_default_order_two_step_feeds_the_finite_difference_hypergradient():
    search = darts.make_darts(NET_CFG, darts.DartsConfig(order=2), TOTAL_STEPS, apply_fn=cell_net)
    params, alpha = cell_net_params(0), initial_alpha(1)
    train, val = make_batch(10), make_batch(11)
    s2, _ = jax.jit(search.step)(make_state(search, params, alpha), train, val)
    cfg = darts.DartsConfig(order=2)
    _, _, hyper = jax.jit(
        lambda p, a, buf: darts.finite_difference_arch_grad(p, a, train, val, buf, search.lr_schedule(0), cfg, search.loss)
    )(s2.params, alpha, darts.momentum_of(s2.w_opt_state, s2.params))
    mu = optax.tree_utils.tree_get(s2.a_opt_state, "mu")
    np.testing.assert_allclose(mu, (1 - cfg.arch_betas[0]) * (hyper + cfg.arch_weight_decay * alpha), rtol=1e-5,
                               atol=1e-9)


@pytest.mark.parametrize("order,flag", [(2, "_FUSE_SECOND_ORDER"), (1, "_FUSE_FIRST_ORDER")])
@pytest.mark.parametrize("beta_decay", [0.0, 50.0])
def test_fused_step_equals_the_plain_step(monkeypatch, order, flag, beta_decay):
    """The looped step (one compiled gradient pass for all of a step's gradients) is the plain
    step, two steps running."""
    cfg = darts.DartsConfig(order=order, beta_decay=beta_decay)
    states, metrics = {}, {}
    for fused in (True, False):
        monkeypatch.setattr(darts, flag, fused)
        search = darts.make_darts(NET_CFG, cfg, TOTAL_STEPS, apply_fn=cell_net, steps_per_epoch=1)
        step = jax.jit(search.step)
        state = make_state(search, cell_net_params(0), initial_alpha(1))
        for i in range(2):
            state, m = step(state, make_batch(20 + 2 * i), make_batch(21 + 2 * i))
        states[fused], metrics[fused] = state, m
    chex.assert_trees_all_close(states[True].params, states[False].params, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(states[True].w_opt_state, states[False].w_opt_state, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(states[True].arch_params, states[False].arch_params, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(states[True].a_opt_state, states[False].a_opt_state, rtol=1e-4, atol=1e-9)
    chex.assert_trees_all_close(metrics[True], metrics[False], rtol=1e-5, atol=1e-6)
    assert int(states[True].step) == 2


@pytest.mark.parametrize("hvp", ["fd", "", None, "EXACT"])
def test_config_rejects_bad_hvp(hvp):
    with pytest.raises(ValueError, match="hvp"):
        darts.DartsConfig(order=2, hvp=hvp)


@pytest.mark.parametrize("order", [0, 3, 1.5, "1"])
def test_config_rejects_bad_order(order):
    with pytest.raises(ValueError, match="order"):
        darts.DartsConfig(order=order)
