"""The NAS-Bench-201 supernet: primitive ops against direct references, cells against a
hand-written NAS-Bench-201 cell, and the compile/vmap properties of ``apply``."""

from __future__ import annotations

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jnas.spaces import nb201 as space
from jnas.supernet import nb201 as supernet
from jnas.supernet import ops

try:
    from jax.experimental import enable_x64
except ImportError:  # newer jax: the config state itself is the context manager

    def enable_x64():
        return jax.enable_x64(True)


def _rand(seed, shape, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _to64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _params(cfg, seed=0):
    """Supernet weights with init's exact structure (via eval_shape) but numpy values.

    ``supernet.init`` itself costs ~20 s of XLA compile on the CI's 2 loaded cores (about
    twenty distinct threefry draws), so only the structure is taken from it.
    """
    shapes = jax.eval_shape(lambda k: supernet.init(k, cfg), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return jnp.asarray(1.0 + 0.1 * rng.standard_normal(s.shape), s.dtype)
        if "bias" in name or name.endswith("['b']"):
            return jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype)
        return jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


# --------------------------------------------------------------------------- conv2d


def _lax_conv(x, w, stride, padding):
    return lax.conv_general_dilated(
        x, w, (stride, stride), ((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=lax.Precision.HIGHEST,
    )


@pytest.mark.parametrize("k, stride, padding", [(3, 1, 1), (1, 1, 0), (3, 2, 1), (1, 2, 0)])
@pytest.mark.parametrize("hw", [(8, 8), (7, 7), (6, 5)])
def test_conv2d_value_and_grads_match_lax(k, stride, padding, hw):
    with enable_x64():
        x = jnp.asarray(_rand(0, (2, *hw, 3)))
        w = jnp.asarray(_rand(1, (k, k, 3, 4)))
        out, vjp = jax.vjp(lambda a, b: ops.conv2d(a, b, stride, padding), x, w)
        ref, ref_vjp = jax.vjp(lambda a, b: _lax_conv(a, b, stride, padding), x, w)
        assert out.dtype == jnp.float64 and out.shape == ref.shape
        ct = jnp.asarray(_rand(2, ref.shape))
        dx, dw = vjp(ct)
        rdx, rdw = ref_vjp(ct)
        assert dx.shape == x.shape and dw.shape == w.shape
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dw, rdw, rtol=1e-12, atol=1e-12)
        # the custom VJP also composes with jit and grad
        f = jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.sin(ops.conv2d(a, b, stride, padding))), argnums=(0, 1)))
        g = jax.grad(lambda a, b: jnp.sum(jnp.sin(_lax_conv(a, b, stride, padding))), argnums=(0, 1))
        for got, want in zip(f(x, w), g(x, w)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k, stride, padding", [(3, 1, 1), (1, 2, 0)])
def test_gated_conv2d_skips_only_the_filter_gradient(k, stride, padding):
    """Under ``filter_gradients_when(gate)``: the same value and input gradient; the filter
    gradient is the ungated one where the run-time gate is true, zeros where it is false."""
    x = jnp.asarray(_rand(0, (2, 8, 8, 3)), jnp.float32)
    w = jnp.asarray(_rand(1, (k, k, 3, 4)), jnp.float32)

    def loss(a, b):
        return jnp.sum(jnp.sin(ops.conv2d(a, b, stride, padding)))

    def gated(a, b, gate):
        with ops.filter_gradients_when(gate):
            return jax.value_and_grad(loss, argnums=(0, 1))(a, b)

    value, (dx, dw) = jax.value_and_grad(loss, argnums=(0, 1))(x, w)
    assert float(jnp.max(jnp.abs(dw))) > 0
    run = jax.jit(gated)
    for gate in (True, False):
        got_value, (got_dx, got_dw) = run(x, w, jnp.asarray(gate))
        np.testing.assert_allclose(got_value, value, rtol=1e-6)
        np.testing.assert_allclose(got_dx, dx, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_dw, dw if gate else np.zeros_like(dw), rtol=1e-5, atol=1e-6)
    # after the traced block, conv2d is ungated again
    np.testing.assert_allclose(jax.grad(loss, argnums=1)(x, w), dw, rtol=1e-6)


# --------------------------------------------------------------------------- pooling, BN


def _torch_avg_pool_3x3(x):
    """PyTorch AvgPool2d(3, stride=1, padding=1, count_include_pad=False), by direct loops."""
    n, h, w, c = x.shape
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            win = x[:, max(i - 1, 0) : min(i + 2, h), max(j - 1, 0) : min(j + 2, w), :]
            out[:, i, j, :] = win.sum(axis=(1, 2)) / (win.shape[1] * win.shape[2])
    return out


def _torch_avg_pool_2x2(x):
    n, h, w, c = x.shape
    out = np.zeros((n, h // 2, w // 2, c))
    for i in range(h // 2):
        for j in range(w // 2):
            out[:, i, j, :] = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, :].mean(axis=(1, 2))
    return out


POOL_SIZES = [(8, 8), (7, 5), (2, 3), (1, 4), (4, 1), (1, 1)]


@pytest.mark.parametrize("hw", POOL_SIZES)
def test_avg_pool_3x3_matches_pytorch_semantics(hw):
    x = _rand(3, (2, *hw, 3))
    # float32 computation against a float64 reference: float32 rounding only
    got = np.asarray(ops.avg_pool_3x3(jnp.asarray(x, jnp.float32)), np.float64)
    np.testing.assert_allclose(got, _torch_avg_pool_3x3(x), rtol=1e-6, atol=1e-6)


def test_avg_pool_3x3_is_float64_exact():
    with enable_x64():
        x = _rand(4, (2, 5, 5, 2))
        got = ops.avg_pool_3x3(jnp.asarray(x))
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), _torch_avg_pool_3x3(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hw", [(8, 8), (7, 5), (2, 3), (3, 2)])
def test_avg_pool_2x2_matches_pytorch_semantics(hw):
    with enable_x64():
        x = _rand(5, (2, *hw, 3))
        got = ops.avg_pool_2x2(jnp.asarray(x))
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), _torch_avg_pool_2x2(x), rtol=1e-12, atol=1e-12)


def _np_batch_norm(x, scale=None, bias=None):
    mean = x.mean(axis=(0, 1, 2))
    var = ((x - mean) ** 2).mean(axis=(0, 1, 2))  # biased, as BN normalises with
    y = (x - mean) / np.sqrt(var + 1e-5)
    return y if scale is None else y * scale + bias


def test_batch_norm_matches_numpy():
    with enable_x64():
        x = 3.0 + 2.0 * _rand(6, (4, 5, 3, 3))
        scale, bias = _rand(7, (3,)), _rand(8, (3,))
        np.testing.assert_allclose(np.asarray(ops.batch_norm(jnp.asarray(x))), _np_batch_norm(x), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            np.asarray(ops.batch_norm(jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias))),
            _np_batch_norm(x, scale, bias), rtol=1e-12, atol=1e-12,
        )
        # eps matters on a near-constant channel (var << eps): catches a wrong eps
        flat = np.ones((2, 2, 2, 1)) + 1e-4 * _rand(9, (2, 2, 2, 1))
        np.testing.assert_allclose(np.asarray(ops.batch_norm(jnp.asarray(flat))), _np_batch_norm(flat), rtol=1e-10)
    x32 = _rand(10, (4, 5, 3, 3), np.float32)
    np.testing.assert_allclose(np.asarray(ops.batch_norm(jnp.asarray(x32))), _np_batch_norm(x32.astype(np.float64)),
                               rtol=1e-5, atol=1e-5)  # float32 BN vs float64 numpy: rsqrt + mean rounding


@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_batch_norm_float32_grads_match_float64_autodiff(offset):
    """The closed-form VJP (float32) against autodiff of the plain formula in float64.

    ``offset`` 30 puts every channel's mean at 30 standard deviations: the VJP forms
    ``sum(dy * xhat)`` as ``sum(dy * x) - mean * sum(dy)``, whose cancellation grows with
    ``|mean| / std``.
    """
    x = offset + _rand(11, (8, 6, 6, 5), np.float32)
    dy = _rand(12, (8, 6, 6, 5), np.float32)
    scale, bias = 1.0 + _rand(13, (5,), np.float32), _rand(14, (5,), np.float32)

    def reference(x, scale, bias):
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.mean((x - mean) ** 2, axis=(0, 1, 2))
        return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias

    _, vjp = jax.vjp(lambda x, s, b: ops.batch_norm(x, s, b), *map(jnp.asarray, (x, scale, bias)))
    _, vjp_plain = jax.vjp(ops.batch_norm, jnp.asarray(x))
    with enable_x64():
        _, ref_vjp = jax.vjp(reference, *(jnp.asarray(a, jnp.float64) for a in (x, scale, bias)))
        want = [np.asarray(g) for g in ref_vjp(jnp.asarray(dy, jnp.float64))]
        _, ref_plain = jax.vjp(lambda x: reference(x, 1.0, 0.0), jnp.asarray(x, jnp.float64))
        want_plain = np.asarray(ref_plain(jnp.asarray(dy, jnp.float64))[0])
    got = [np.asarray(g) for g in vjp(jnp.asarray(dy))]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-4 * np.abs(w).max())
    np.testing.assert_allclose(np.asarray(vjp_plain(jnp.asarray(dy))[0]), want_plain, rtol=2e-4,
                               atol=2e-4 * np.abs(want_plain).max())


# --------------------------------------------------------------------------- reference cell


def _ref_op(op: str, x, w1_e, w3_e):
    """One NAS-Bench-201 candidate op (search-cell flavour: non-affine, batch-stat BN)."""
    if op == "none":
        return jnp.zeros_like(x)
    if op == "skip_connect":
        return x
    if op == "nor_conv_1x1":
        return _ref_bn(_lax_conv(jax.nn.relu(x), w1_e[None, None], 1, 0))
    if op == "nor_conv_3x3":
        return _ref_bn(_lax_conv(jax.nn.relu(x), w3_e, 1, 1))
    if op == "avg_pool_3x3":
        return _ref_avg_pool(x)
    raise AssertionError(op)


def _ref_bn(x):
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean((x - mean) ** 2, axis=(0, 1, 2))
    return (x - mean) / jnp.sqrt(var + 1e-5)


def _ref_avg_pool(x):
    """count_include_pad=False by explicit window sums divided by explicit counts."""
    _, h, w, _ = x.shape
    ones = jnp.ones((1, h, w, 1), x.dtype)
    window = lambda a: lax.reduce_window(a, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
    return window(x) / window(ones)


def _ref_cell_discrete(w1, w3, h0, encoding):
    """Node j = sum_{i<j} op_ij(node_i), exactly the chosen op per edge; output node 3."""
    nodes = [h0]
    for j in range(1, 4):
        total = 0.0
        for e, (src, dst) in enumerate(space.EDGES):
            if dst == j:
                total = total + _ref_op(space.OPS[int(encoding[e])], nodes[src], w1[e], w3[e])
        nodes.append(total)
    return nodes[3]


def _ref_cell_mixed(w1, w3, h0, arch_weights):
    """The DARTS mixed cell: each edge is sum_k a[e, k] * op_k(node_src)."""
    nodes = [h0]
    for j in range(1, 4):
        total = 0.0
        for e, (src, dst) in enumerate(space.EDGES):
            if dst == j:
                for k, op in enumerate(space.OPS):
                    total = total + arch_weights[e, k] * _ref_op(op, nodes[src], w1[e], w3[e])
        nodes.append(total)
    return nodes[3]


def _cell_inputs(seed, c=3, hw=(6, 5)):
    key = jax.random.key(seed)
    k1, k3, kx = jax.random.split(key, 3)
    w1 = jax.random.normal(k1, (6, c, c), jnp.float64) / np.sqrt(c)
    w3 = jax.random.normal(k3, (6, 3, 3, c, c), jnp.float64) / np.sqrt(9 * c)
    h0 = jax.random.normal(kx, (2, *hw, c), jnp.float64)
    return w1, w3, h0


def _one_hot_cases():
    rng = np.random.default_rng(11)
    cases = []
    for edge in range(6):
        for op in range(5):
            enc = rng.integers(0, 5, 6)
            enc[edge] = op
            cases.append(enc)
    cases += [rng.integers(0, 5, 6) for _ in range(6)]
    cases += [np.full(6, k) for k in range(5)]
    return cases


# float64 throughout: the cell must match the hand-written reference to rounding.
CELL_TOL = dict(rtol=1e-10, atol=1e-10)


def test_one_hot_cell_equals_the_chosen_ops():
    with enable_x64():
        w1, w3, h0 = _cell_inputs(0)
        cell = jax.jit(supernet.cell)
        for enc in _one_hot_cases():
            got = cell(w1, w3, h0, space.one_hot(enc).astype(jnp.float64))
            want = _ref_cell_discrete(w1, w3, h0, enc)
            assert got.shape == h0.shape
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), **CELL_TOL, err_msg=str(enc))
        # the reference is not trivially satisfied: different archs give different outputs
        a = _ref_cell_discrete(w1, w3, h0, [3, 3, 3, 3, 3, 3])
        b = _ref_cell_discrete(w1, w3, h0, [3, 3, 3, 3, 3, 2])
        assert float(jnp.max(jnp.abs(a - b))) > 1e-2


def test_mixed_cell_value_and_grads_match_reference():
    with enable_x64():
        w1, w3, h0 = _cell_inputs(1)
        weights = jax.nn.softmax(jax.random.normal(jax.random.key(5), (6, 5), jnp.float64), axis=-1)
        ct = jax.random.normal(jax.random.key(6), h0.shape, jnp.float64)
        loss = lambda f: (lambda *a: jnp.sum(ct * f(*a)))
        got_v = jax.jit(supernet.cell)(w1, w3, h0, weights)
        want_v = jax.jit(_ref_cell_mixed)(w1, w3, h0, weights)
        np.testing.assert_allclose(np.asarray(got_v), np.asarray(want_v), **CELL_TOL)
        got = jax.jit(jax.grad(loss(supernet.cell), argnums=(0, 1, 2, 3)))(w1, w3, h0, weights)
        want = jax.jit(jax.grad(loss(_ref_cell_mixed), argnums=(0, 1, 2, 3)))(w1, w3, h0, weights)
        for name, g, r in zip(("w1", "w3", "h0", "arch_weights"), got, want):
            # the none column of arch_weights has zero gradient in both (its op is zero)
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), **CELL_TOL, err_msg=name)


# --------------------------------------------------------------------------- apply


@pytest.mark.parametrize("in_channels, image_size", [(1, 28), (3, 32), (1, 8)])
def test_apply_output_shape(in_channels, image_size):
    cfg = supernet.SupernetConfig(channels=2, cells=1, num_classes=7, in_channels=in_channels, image_size=image_size)
    params = _params(cfg)
    images = jax.random.normal(jax.random.key(1), (3, image_size, image_size, in_channels))
    alpha = supernet.init_arch_params(jax.random.key(2))
    logits = jax.jit(functools.partial(supernet.apply, config=cfg))(params, images, jax.nn.softmax(alpha, -1))
    assert logits.shape == (3, 7) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA CPU's convolution canonicalisation")
def test_scanned_cell_gradients_compile_to_library_convolutions():
    """Every convolution of a scanned stage's gradient is in XLA CPU's canonical form.

    XLA CPU runs canonical (NHWC, HWIO, NHWC) convolutions in Eigen or YNNPACK; inside a
    while body it left the transposed convolution of ``jax.vjp`` as is and emitted a
    naive loop (40 s per DARTS step instead of 1.7 s). ``ops.conv2d``'s filter gradient
    is written canonically so that this cannot happen.
    """
    cfg = supernet.SupernetConfig(channels=2, cells=2, num_classes=3, in_channels=1, image_size=8, scan_cells=True)
    stage = _params(cfg)["stages"][1]
    x = jnp.ones((4, 4, 4, 4), jnp.float32)
    weights = jnp.full((6, 5), 0.2, jnp.float32)
    grad = jax.grad(lambda p, h: jnp.sum(supernet._stage(p, h, weights, True) ** 2), argnums=(0, 1))
    hlo = jax.jit(grad).lower(stage, x).compile().as_text()
    labels = re.findall(r"convolution\(.*?dim_labels=([^,\s]+)", hlo)
    assert "while" in hlo and len(labels) >= 12  # 2 source-node convs x (forward, input and filter grads) x 2
    assert set(labels) == {"b01f_01io->b01f"}, sorted(set(labels))


def test_scan_and_unrolled_cells_agree():
    """Same logits from the whole network, and the same gradients through a stage of two cells.

    ``scan_cells`` acts only inside ``supernet._stage``; gradients are compared there
    because a whole-network backward costs ~14 s of XLA compile per variant on 2 CPU cores.
    """
    with enable_x64():
        cfgs = [
            supernet.SupernetConfig(channels=2, cells=2, num_classes=3, in_channels=1, image_size=8, scan_cells=scan)
            for scan in (True, False)
        ]
        params = _to64(_params(cfgs[0]))
        images = jax.random.normal(jax.random.key(1), (4, 8, 8, 1), jnp.float64)
        weights = jax.nn.softmax(jax.random.normal(jax.random.key(2), (6, 5), jnp.float64), -1)
        logits = [jax.jit(functools.partial(supernet.apply, config=cfg))(params, images, weights) for cfg in cfgs]
        np.testing.assert_allclose(np.asarray(logits[0]), np.asarray(logits[1]), rtol=1e-12, atol=1e-12)

        stage = params["stages"][1]  # 2 cells at width 4
        x = jax.random.normal(jax.random.key(3), (4, 4, 4, 4), jnp.float64)
        ct = jax.random.normal(jax.random.key(4), x.shape, jnp.float64)
        grads = [
            jax.jit(jax.grad(lambda p, a, h, scan=scan: jnp.sum(ct * supernet._stage(p, h, a, scan)), argnums=(0, 1, 2)))(
                stage, weights, x
            )
            for scan in (True, False)
        ]
        chex.assert_trees_all_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
        # both cells of the stage get a gradient (the scan really runs both)
        assert float(jnp.abs(grads[0][0]["w3"][1]).max()) > 0 and float(jnp.abs(grads[0][0]["w3"][0]).max()) > 0


def test_vmapped_architectures_equal_a_loop():
    cfg = supernet.SupernetConfig(channels=2, cells=1, num_classes=4, in_channels=1, image_size=8)
    params = _params(cfg)
    images = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    encodings = space.sample(jax.random.key(2), (5,))
    weights = jnp.concatenate(
        [space.one_hot(encodings), jax.nn.softmax(jax.random.normal(jax.random.key(3), (2, 6, 5)), -1)]
    )
    apply = functools.partial(supernet.apply, config=cfg)
    batched = jax.jit(jax.vmap(apply, in_axes=(None, None, 0)))(params, images, weights)
    single = jax.jit(apply)
    looped = jnp.stack([single(params, images, w) for w in weights])
    assert batched.shape == (7, 4, 4)
    # same float32 math, batched vs not: only reduction-order rounding (logits are O(1); CI saw 1.2e-6)
    np.testing.assert_allclose(np.asarray(batched), np.asarray(looped), rtol=1e-5, atol=1e-5)
    # different architectures really give different logits
    assert float(jnp.abs(looped[0] - looped[1]).max()) > 1e-4


def test_no_recompile_when_architecture_changes():
    cfg = supernet.SupernetConfig(channels=2, cells=1, num_classes=3, in_channels=1, image_size=8)
    params = _params(cfg)
    images = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    chex.clear_trace_counter()
    apply = jax.jit(chex.assert_max_traces(lambda p, x, a: supernet.apply(p, x, a, cfg), n=1))
    outs = []
    for seed in range(3):
        alpha = supernet.init_arch_params(jax.random.key(seed))
        outs.append(apply(params, images, jax.nn.softmax(alpha, -1)))
    for seed in range(3):
        outs.append(apply(params, images, space.one_hot(space.sample(jax.random.key(10 + seed)))))
    assert len({np.asarray(o).tobytes() for o in outs}) == len(outs)


def test_init_parameter_count_matches_hand_count():
    c, n, k, cin = 2, 1, 10, 3
    cfg = supernet.SupernetConfig(channels=c, cells=n, num_classes=k, in_channels=cin, image_size=8)
    # eval_shape runs init's Python exactly (only the threefry compile is skipped)
    params = jax.eval_shape(lambda key: supernet.init(key, cfg), jax.random.key(0))
    stem = 9 * cin * c + 2 * c  # conv3x3, BN scale + bias
    cells = sum(n * 6 * (w * w + 9 * w * w) for w in (c, 2 * c, 4 * c))  # 1x1 and 3x3 kernel per edge, no bias
    reductions = sum(
        9 * w * o + 2 * o + 9 * o * o + 2 * o + w * o  # conv_a+BN, conv_b+BN, 1x1 shortcut
        for w, o in ((c, 2 * c), (2 * c, 4 * c))
    )
    head = 2 * 4 * c + 4 * c * k + k  # BN, linear
    assert supernet.count_params(params) == stem + cells + reductions + head == 6372
    assert params["stages"][1]["w3"].shape == (n, 6, 3, 3, 2 * c, 2 * c)
    assert params["stages"][2]["w1"].shape == (n, 6, 4 * c, 4 * c)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
    # three cells per stage scale the cell count linearly
    params3 = jax.eval_shape(lambda key: supernet.init(key, supernet.SupernetConfig(c, 3, k, cin, 8)), jax.random.key(0))
    assert supernet.count_params(params3) == stem + 3 * cells + reductions + head


def test_init_arch_params_scale():
    alpha = supernet.init_arch_params(jax.random.key(0))
    assert alpha.shape == (6, 5)
    assert 0 < float(jnp.abs(alpha).max()) < 1e-2


@pytest.mark.parametrize(
    "kwargs", [dict(channels=0), dict(cells=-1), dict(num_classes=True), dict(image_size=3), dict(in_channels=1.0)]
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        supernet.SupernetConfig(**kwargs)
