"""Zero-cost proxies: batched scores equal stand-alone discrete networks, no recompiles, hand cases."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jnas.benchmarks import nb201 as bench
from jnas.proxies import PROXIES, activation, batched, network
from jnas.spaces import nb201 as space
from jnas.supernet import nb201 as supernet

CFG = supernet.SupernetConfig(channels=4, cells=1, image_size=8)
ARCHS = np.array([
    space.parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"),
    space.parse("|nor_conv_1x1~0|+|skip_connect~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|"),
    space.parse("|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"),
    space.parse("|skip_connect~0|+|none~0|nor_conv_3x3~1|+|nor_conv_3x3~0|none~1|avg_pool_3x3~2|"),
])


@pytest.fixture(scope="module")
def setup():
    params = network.init_params(jax.random.key(0), CFG)
    images = jax.random.normal(jax.random.key(1), (6, 8, 8, 3))
    labels = jnp.arange(6) % 10
    return params, images, labels


@pytest.fixture(scope="module")
def batched_scores(setup):
    """``get(name)``: scores of the 4 ARCHS from one call (capacity 2, key 0), computed once per proxy.

    Several tests read the same batched scores; computing them once keeps the module fast.
    """
    params, images, labels = setup
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = np.asarray(PROXIES[name].fn(params, (images, labels), jnp.asarray(ARCHS), jax.random.key(0),
                                                      config=CFG, capacity=2))
        return cache[name]

    return get


# ---------------------------------------------------------------- the stand-alone reference
def _conv(x, w, stride, pad):
    return lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _bn(x, scale=1.0, bias=0.0):
    mean = x.mean((0, 1, 2))
    var = ((x - mean) ** 2).mean((0, 1, 2))
    return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias


def _pool3(x):
    """3x3 average pool, stride 1, count_include_pad=False, as a depthwise convolution."""
    c = x.shape[-1]
    sums = lax.conv_general_dilated(x, jnp.ones((3, 3, 1, c), x.dtype), (1, 1), ((1, 1), (1, 1)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)
    counts = _conv(jnp.ones(x.shape[:3] + (1,), x.dtype), jnp.ones((3, 3, 1, 1), x.dtype), 1, 1)
    return sums / counts


def reference_net(params, x, encoding, use_bn: bool, layer=None, bn_input=None, features_only=False):
    """One discrete NB201 network, written plainly (Python control flow on the encoding).

    ``use_bn=False`` is the synflow copy: no stem/cell/head BN; reduction blocks keep theirs.
    ``layer(a, w)`` sees every conv/linear output ``a`` (conv + bias, before BN) with its
    weight ``w`` and returns what flows on (fisher adds probes there); ``bn_input(x)`` sees
    every BatchNorm's input (zen); ``features_only`` returns the map before global pooling.
    """
    layer = layer or (lambda a, w: a)

    def bn(y, scale=1.0, bias=0.0):
        if bn_input is not None:
            bn_input(y)
        return _bn(y, scale, bias)

    st = params["stem"]
    x = layer(_conv(x, st["w"], 1, 1), st["w"])
    if use_bn:
        x = bn(x, st["scale"], st["bias"])
    for s, stage in enumerate(params["stages"]):
        for n in range(stage["w1"].shape[0]):
            nodes = [x]
            for j in range(1, 4):
                total = 0.0
                for e, (src, dst) in enumerate(space.EDGES):
                    if dst != j:
                        continue
                    h, op = nodes[src], space.OPS[int(encoding[e])]
                    if op == "skip_connect":
                        total = total + h
                    elif op == "avg_pool_3x3":
                        total = total + _pool3(h)
                    elif op == "nor_conv_3x3":
                        y = layer(_conv(jax.nn.relu(h), stage["w3"][n, e], 1, 1) + stage["b3"][n, e], stage["w3"][n, e])
                        total = total + (bn(y) if use_bn else y)
                    elif op == "nor_conv_1x1":
                        w = stage["w1"][n, e][None, None]
                        y = layer(_conv(jax.nn.relu(h), w, 1, 0) + stage["b1"][n, e], w)
                        total = total + (bn(y) if use_bn else y)
                    else:
                        total = total + 0.0 * h
                nodes.append(total)
            x = nodes[-1]
        if s < 2:
            p = params["reductions"][s]
            y = bn(layer(_conv(jax.nn.relu(x), p["conv_a"], 2, 1), p["conv_a"]), p["scale_a"], p["bias_a"])
            y = bn(layer(_conv(jax.nn.relu(y), p["conv_b"], 1, 1), p["conv_b"]), p["scale_b"], p["bias_b"])
            short = layer(_conv(supernet.ops.avg_pool_2x2(x), p["shortcut"], 1, 0), p["shortcut"])
            x = short + y
    hd = params["head"]
    if use_bn:
        x = bn(x, hd["scale"], hd["bias"])
    x = jax.nn.relu(x)
    if features_only:
        return x
    return layer(x.mean((1, 2)) @ hd["w"] + hd["b"], hd["w"])


def _weights_only(tree, params):
    mask = network.weight_mask(params)
    return [leaf for leaf, keep in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(mask)) if keep]


def _ce(logits, labels):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))


def reference_scores(params, images, labels, encoding):
    """synflow (float64), snip, grad_norm, grasp from jax.grad on one discrete network."""
    out = {}
    with jax.enable_x64(True):  # local to the reference: the library never flips global config
        p64 = jax.tree_util.tree_map(lambda a: jnp.abs(jnp.asarray(a, jnp.float64)), params)
        ones = jnp.ones((1, 8, 8, 3), jnp.float64)
        g = jax.grad(lambda p: jnp.sum(reference_net(p, ones, encoding, False)))(p64)
        products = [w * d for w, d in zip(_weights_only(p64, params), _weights_only(g, params))]
        signed = sum(float(jnp.sum(x)) for x in products)  # Tanaka et al.'s Σ θ ⊙ ∂R/∂θ
        total = sum(float(jnp.sum(jnp.abs(x))) for x in products)  # zero-cost-nas sums |θ ⊙ ∂R/∂θ|
        out["synflow"] = np.log(signed) if signed > 0 else -np.inf
        out["synflow_abs"] = np.log(total) if total > 0 else -np.inf

    def loss(p):
        return _ce(reference_net(p, images, encoding, True), labels)

    g = jax.grad(loss)(params)
    ws, gs = _weights_only(params, params), _weights_only(g, params)
    out["snip"] = sum(float(jnp.sum(jnp.abs(w * d))) for w, d in zip(ws, gs))
    # grad_norm is per *layer*: split stacked cell kernels into their (cell, edge) layers, keep used ones
    norms = 0.0
    for path_leaf, d in zip(jax.tree_util.tree_flatten_with_path(g)[0], jax.tree_util.tree_leaves(g)):
        path, _ = path_leaf
        if not network.is_weight_path(path):
            continue
        name = path[-1].key
        if name in ("w1", "w3"):
            for n in range(d.shape[0]):
                for e in range(d.shape[1]):
                    if int(encoding[e]) == (network.CONV1 if name == "w1" else network.CONV3):
                        norms += float(jnp.linalg.norm(d[n, e]))
        else:
            norms += float(jnp.linalg.norm(d))
    out["grad_norm"] = norms
    mask = network.weight_mask(params)
    g_const = jax.lax.stop_gradient(g)

    def z(p):
        gp = jax.grad(loss)(p)
        return sum(jnp.sum(a * b) for a, b, keep in zip(jax.tree_util.tree_leaves(g_const), jax.tree_util.tree_leaves(gp),
                                                         jax.tree_util.tree_leaves(mask)) if keep)

    hg = jax.grad(z)(params)
    out["grasp"] = -sum(float(jnp.sum(w * h)) for w, h in zip(ws, _weights_only(hg, params)))
    return out


def reference_fisher(params, images, labels, encoding):
    """Fisher from its definition: per layer and output channel k, ½ mean_n (Σ_hw a g)², times fan_in.

    ``g = ∂L/∂a`` is the gradient w.r.t. zero probes added to every conv/linear output.
    """
    acts, fans = [], []

    def record(a, w):
        acts.append(a)
        fans.append(w.size // w.shape[-1])  # C_in·k_h·k_w (conv, HWIO) or C_in (linear)
        return a

    reference_net(params, images, encoding, True, layer=record)

    def loss(probes):
        queue = list(probes)
        return _ce(reference_net(params, images, encoding, True, layer=lambda a, w: a + queue.pop(0)), labels)

    grads = jax.grad(loss)([jnp.zeros_like(a) for a in acts])
    total = 0.0
    for a, g, fan in zip(acts, grads, fans):
        per_sample = jnp.sum(a * g, (1, 2)) if a.ndim == 4 else a * g  # (B, channels)
        total += fan * float(jnp.sum(0.5 * jnp.mean(per_sample**2, 0)))
    return total


def reference_zen(params, images, encoding, key, alpha=0.01):
    """Zen-score from its definition on the plainly written network (keys split as ``activation.zen``)."""
    w_key, x_key, e_key = jax.random.split(key, 3)
    weights = activation.gaussian_params(params, w_key)
    x = jax.random.normal(x_key, images.shape)
    eps = jax.random.normal(e_key, images.shape)
    variances = []
    f = reference_net(weights, x, encoding, True, bn_input=lambda y: variances.append(y.var((0, 1, 2))),
                      features_only=True)
    f_mixed = reference_net(weights, x + alpha * eps, encoding, True, features_only=True)
    phi = jnp.mean(jnp.sum(jnp.abs(f - f_mixed), (1, 2, 3)))
    return float(jnp.log(phi)) + sum(float(jnp.log(jnp.sqrt(jnp.mean(v)))) for v in variances)


# ---------------------------------------------------------------- tests
def test_batched_equals_standalone_network(setup, batched_scores):
    params, images, labels = setup
    assert batched.required_capacity(ARCHS) <= 2  # each op appears at most twice per edge here, so 2 slots suffice
    got = {name: batched_scores(name) for name in ("synflow", "synflow_abs", "snip", "grad_norm", "grasp")}
    got["synflow_abs"] = batched_scores("synflow_abs")
    for a, encoding in enumerate(ARCHS):
        want = reference_scores(params, images, labels, encoding)
        for name in ("synflow", "synflow_abs"):  # logs; float32 rescaled vs float64
            np.testing.assert_allclose(got[name][a], want[name], rtol=0, atol=2e-5, err_msg=name)
        # the two variants differ here (BN in the reduction blocks makes some θ ⊙ ∂R/∂θ negative)
        assert abs(want["synflow_abs"] - want["synflow"]) > 1e-4
        for name in ("snip", "grad_norm", "grasp"):
            np.testing.assert_allclose(got[name][a], want[name], rtol=2e-4, atol=1e-6, err_msg=name)


def test_fisher_equals_standalone_network(setup, batched_scores):
    params, images, labels = setup
    got = batched_scores("fisher")
    for a, encoding in enumerate(ARCHS):
        want = reference_fisher(params, images, labels, encoding)
        # float32 both; per-sample squares and a different summation order: measured <= 1e-6 relative
        np.testing.assert_allclose(got[a], want, rtol=1e-5)


def test_zen_equals_standalone_network(setup, batched_scores):
    params, images, labels = setup
    got = batched_scores("zen")  # key 0, as below
    for a, encoding in enumerate(ARCHS):
        # a log score (~20) in float32 both; Φ is a difference of features 1% apart (α = 0.01), which
        # keeps ~5 of float32's ~7 digits: measured |Δ| <= 1.2e-5
        np.testing.assert_allclose(got[a], reference_zen(params, images, encoding, jax.random.key(0)), rtol=0, atol=1e-4)


def test_counts_by_hand():
    """params and flops of NB201-sized networks (C=16, N=5, 32x32x3, 10 classes), counted by hand."""
    config = supernet.SupernetConfig()
    enc = jnp.asarray(np.array([
        space.parse("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"),
        space.parse("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"),
        space.parse("|nor_conv_1x1~0|+|none~0|none~1|+|none~0|none~1|none~2|"),
    ]))
    # all-none: stem 3x3 conv 3->16 + BN: 432 + 32 = 464
    #   reduction 16->32: conv_a 9*16*32 + BN 64 + conv_b 9*32*32 + BN 64 + shortcut 16*32 = 4608+64+9216+64+512 = 14464
    #   reduction 32->64: 18432 + 128 + 36864 + 128 + 2048 = 57600
    #   head: BN 128 + linear 64*10 + 10 = 778;   464 + 14464 + 57600 + 778 = 73306
    # one conv3x3 edge adds, per stage, 5 cells x (9 w^2 + BN 2w), w = 16, 32, 64:
    #   5*(2304+32) + 5*(9216+64) + 5*(36864+128) = 11680 + 46400 + 184960 = 243040
    # one conv1x1 edge: 5*(256+32) + 5*(1024+64) + 5*(4096+128) = 1440 + 5440 + 21120 = 28000
    got = np.asarray(PROXIES["params"].fn(None, None, enc, None, config=config))
    np.testing.assert_array_equal(got, [73306, 73306 + 243040, 73306 + 28000])
    # MACs, all-none: stem 9*3*16*32*32 = 442368
    #   reduction 1 at 16x16: (9*16*32 + 9*32*32 + 16*32)*256 = (4608+9216+512)*256 = 3670016
    #   reduction 2 at 8x8:   (9*32*64 + 9*64*64 + 32*64)*64 = (18432+36864+2048)*64 = 3670016
    #   linear 64*10 = 640;   442368 + 2*3670016 + 640 = 7783040
    # one conv3x3 edge: 5 cells x 9 w^2 x hw per stage = 5*9*(256*1024 + 1024*256 + 4096*64) = 35389440
    #   (all six edges conv3x3: 7783040 + 6*35389440 = 220.11968 M, NAS-Bench-201's largest FLOPs)
    # one conv1x1 edge: 5*(256*1024 + 1024*256 + 4096*64) = 3932160
    got = np.asarray(PROXIES["flops"].fn(None, None, enc, None, config=config), np.float64)
    np.testing.assert_allclose(got, np.array([7783040, 7783040 + 35389440, 7783040 + 3932160]) / 1e6, rtol=1e-7)


@pytest.mark.parametrize("name", list(PROXIES))
def test_every_proxy_batched_equals_one_at_a_time(setup, batched_scores, name):
    """One call over the 4 ARCHS (capacity 2) gives each architecture the score it gets alone (A=1)."""
    params, images, labels = setup
    fn, key = PROXIES[name].fn, jax.random.key(0)
    batch = batched_scores(name)
    # Alone, capacity 1 takes the one-architecture path (a lax.cond skips an unchosen conv). Called
    # eagerly, that cond is re-traced and compiled at every call (tens of seconds each on CPU); with
    # jit disabled it runs the taken branch in Python, the same values.
    with jax.disable_jit():
        alone = np.array([np.asarray(fn(params, (images, labels), jnp.asarray(ARCHS[a : a + 1]), key, config=CFG,
                                        capacity=1))[0] for a in range(len(ARCHS))])
    # GraSP's -Σ θ·Hg sums second-order terms of both signs, so float32 rounding differences of the
    # two computations (measured up to 2.6e-5 relative) are amplified; others measured <= 1e-6
    rtol = 1e-4 if name == "grasp" else 2e-6
    np.testing.assert_allclose(batch, alone, rtol=rtol, atol=1e-6, err_msg=name)


def test_unchosen_ops_do_not_leak(setup):
    """Changing the kernels of ops an architecture did not choose changes none of its scores."""
    params, images, labels = setup
    enc = jnp.asarray(ARCHS[2:3])  # conv1x1 on edges 1 and 3 only; no conv3x3 anywhere
    mask1 = np.zeros((1, 6, 1, 1), np.float32)
    mask1[0, [1, 3]] = 1.0
    poisoned = dict(params, stages=[
        dict(stage, w3=stage["w3"] * 1e3 + 7.0, w1=stage["w1"] * mask1 + (1 - mask1) * 5.0, b3=stage["b3"] + 3.0,
             b1=stage["b1"] * mask1[..., 0] + (1 - mask1[..., 0]) * 2.0)
        for stage in params["stages"]
    ])
    for name in ("synflow", "snip", "grad_norm", "fisher", "nwot", "jacob_cov"):
        a = PROXIES[name].fn(params, (images, labels), enc, jax.random.key(3), config=CFG)
        b = PROXIES[name].fn(poisoned, (images, labels), enc, jax.random.key(3), config=CFG)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, err_msg=name)


def test_jacob_cov_equals_supernet_one_hot(setup):
    """jacob_cov from the supernet with one-hot weights (equal: BN cancels the cell biases)."""
    params, images, labels = setup
    got = np.asarray(PROXIES["jacob_cov"].fn(params, (images, labels), jnp.asarray(ARCHS), jax.random.key(0), config=CFG))
    for a, encoding in enumerate(ARCHS):
        jac = jax.grad(lambda x: jnp.sum(supernet.apply(params, x, space.one_hot(encoding), CFG)))(images)
        corr = np.corrcoef(np.asarray(jac, np.float64).reshape(len(images), -1))
        eig = np.linalg.eigvalsh(corr)
        want = -np.sum(np.log(eig + 1e-5) + 1 / (eig + 1e-5))
        np.testing.assert_allclose(got[a], want, rtol=1e-3)


def test_nwot_hand_kernel():
    """The Hamming kernel identity used by nwot: (s s^T + D)/2 = c c^T + (1-c)(1-c)^T."""
    pre = jnp.array([[[1.0, -2.0, 3.0, -1.0], [2.0, 1.0, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]]])  # (A=1, B=3, D=4)
    tape = network.Tape(collect_codes=True)
    tape.relu_code(pre)
    c = (np.asarray(pre[0]) > 0).astype(float)
    want = c @ c.T + (1 - c) @ (1 - c).T
    np.testing.assert_array_equal(np.asarray(tape.kernels[0][0]), want)
    assert want.tolist() == [[4, 2, 2], [2, 4, 2], [2, 2, 4]]  # agreements counted by hand
    # several architectures (one product each under lax.map): each gets its own kernel
    second = jnp.array([[[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, -1.0], [-1.0, -1.0, 1.0, 1.0]]])  # codes 1111, 1110, 0011
    kernels = network.hamming_kernel(jnp.concatenate([pre, second, -pre]))  # flipping every sign keeps agreements
    np.testing.assert_array_equal(np.asarray(kernels), [want, [[4, 3, 2], [3, 4, 1], [2, 1, 4]], want])


def test_slot_weight_grad_equals_autodiff():
    x = jax.random.normal(jax.random.key(0), (3, 2, 6, 6, 4))
    for size, stride, pad in ((3, 1, 1), (3, 2, 1), (3, 1, 0), (1, 1, 0), (1, 2, 0)):
        w = jax.random.normal(jax.random.key(1), (size, size, 4, 5))

        def f(w_, xi):
            return jnp.sum(jnp.sin(_conv(xi, w_, stride, pad)))

        g = jax.vmap(lambda xi: jax.grad(lambda y: jnp.sum(jnp.sin(y)))(_conv(xi, w, stride, pad)))(x)
        meta = network.LayerMeta("conv", size, stride, pad)
        want = jax.vmap(lambda xi: jax.grad(f)(w, xi))(x)
        np.testing.assert_allclose(np.asarray(network.slot_weight_grad(x, g, meta)), np.asarray(want), rtol=1e-5, atol=1e-5)
        one = network.slot_weight_grad(x[1:2], g[1:2], meta)  # a single slot
        np.testing.assert_allclose(np.asarray(one), np.asarray(want[1:2]), rtol=1e-5, atol=1e-5)
        # every slot reading the same input (the stem on a shared batch): one product for all
        shared = network.slot_weight_grad(x[:1], g, meta)
        want_shared = jax.vmap(lambda gi: jax.vjp(lambda w_: _conv(x[0], w_, stride, pad), w)[1](gi)[0])(g)
        np.testing.assert_allclose(np.asarray(shared), np.asarray(want_shared), rtol=1e-5, atol=1e-5)


def test_params_match_nb201_table():
    table_path = bench.default_path()
    if table_path is None:
        pytest.skip("no NAS-Bench-201 table")
    table = bench.load_table(table_path)
    enc = jnp.asarray(space.all_encodings())
    got = np.asarray(PROXIES["params"].fn(None, None, enc, None, config=supernet.SupernetConfig()), np.float64) / 1e6
    close = np.abs(got - table["cifar10_params_mb"]) < 1e-5
    # 150 table rows (<1%) count one conv3x3 fewer than their arch string has; all others match exactly
    assert close.mean() > 0.99
    assert got[0] == pytest.approx(0.073306)  # all-none cell: stem, reductions, head only (hand count)


def test_batched_chunks_equal_per_arch_loop_and_do_not_recompile(setup):
    params, images, labels = setup
    codes = np.asarray(space.encoding_to_code(ARCHS))
    names = ["synflow", "nwot"]
    scanned = batched.score_archs(codes, names, dataclasses.replace(CFG, scan_cells=True), images=images, labels=labels,
                                  inits=2, chunk=4, capacity=4)
    full = batched.score_archs(codes, names, CFG, images=images, labels=labels, inits=2, chunk=4, capacity=4)
    for n in names:  # cells under lax.scan (stacked tape records) give the same scores
        np.testing.assert_allclose(scanned.scores[n], full.scores[n], rtol=2e-5, atol=1e-5, err_msg=n)
    loop = {n: [] for n in names}
    compiles = []

    def count(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    for i, code in enumerate(codes):
        if i > 0:  # the first call compiled the one-architecture scorer; the others must reuse it
            jax.monitoring.register_event_duration_secs_listener(count)
        try:
            r = batched.score_archs(np.array([code]), names, CFG, images=images, labels=labels, inits=2, chunk=1)
        finally:
            if i > 0:
                jax.monitoring.unregister_event_duration_listener(count)
        for n in names:
            loop[n].append(r.scores[n][0])
        if i > 0:
            assert compiles == [], f"call {i} (another cell, same shapes) compiled {len(compiles)} time(s)"
    for n in names:
        np.testing.assert_allclose(full.scores[n], np.stack(loop[n]), rtol=2e-5, atol=1e-5, err_msg=n)


def test_init_chunks_equal_one_call(setup):
    """Thousands of inits stream in chunks: 5 inits in calls of 2 (last one padded) == one call of 5."""
    _, images, labels = setup
    codes = np.asarray(space.encoding_to_code(ARCHS[:3]))
    one = batched.score_archs(codes, ["synflow"], CFG, images=images, labels=labels, inits=5, chunk=2, capacity=2)
    assert one.init_chunk == 5
    streamed = batched.score_archs(codes, ["synflow"], CFG, images=images, labels=labels, inits=5, chunk=2,
                                   capacity=2, init_chunk=2)
    assert streamed.init_chunk == 2 and streamed.scores["synflow"].shape == (3, 5)
    np.testing.assert_allclose(streamed.scores["synflow"], one.scores["synflow"], rtol=1e-5)
    # the 5 inits really differ (a wrong key slice would repeat columns)
    assert len(np.unique(np.round(one.scores["synflow"][0], 6))) == 5
    # the default caps a call at MAX_EVALUATIONS networks
    capped = batched.score_archs(codes[:1], ["params"], CFG, images=images, labels=labels,
                                 inits=batched.MAX_EVALUATIONS + 1, chunk=1, capacity=1)
    assert capped.init_chunk == batched.MAX_EVALUATIONS
    # proxies that read the batch count its images: B=4 images, 2 archs -> 1024 // 4 // 2
    data = batched.score_archs(codes[:2], ["params", "nwot"], CFG, images=images[:4], labels=labels[:4],
                               inits=300, chunk=2, capacity=2)
    assert data.init_chunk == batched.MAX_EVALUATIONS // 4 // 2 and data.scores["nwot"].shape == (2, 300)


def test_balanced_order_is_a_balanced_partition():
    order = batched.balanced_order()
    assert sorted(order.tolist()) == list(range(space.NUM_ARCHS))
    enc = np.asarray(space.code_to_encoding(order)).reshape(-1, batched.BLOCK, 6)
    for op in range(5):
        assert ((enc == op).sum(1) == 5).all()


def test_apply_rejects_images_without_a_matching_architecture_axis():
    config = supernet.SupernetConfig(channels=4, cells=1)
    params = network.init_params(jax.random.key(0), config)
    encodings = jnp.zeros((3, space.NUM_EDGES), jnp.int32)
    with pytest.raises(ValueError, match="A=3"):
        network.apply(params, jnp.zeros((2, 2, 8, 8, 3)), encodings, config)
    with pytest.raises(ValueError, match=r"\(1, B, H, W, C\)"):
        network.apply(params, jnp.zeros((2, 8, 8, 3)), encodings, config)
    logits, _ = network.apply(params, jnp.zeros((1, 2, 8, 8, 3)), encodings, config)  # shared input
    assert logits.shape == (3, 2, config.num_classes)


# ---------------------------------------------------------------- pruning dead edges
def test_prune_dead_edges_by_hand():
    cases = {
        # node 1 feeds nothing that reaches node 3: edge 0->1 is dead
        "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|":
            "|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|",
        # node 1 is exactly zero: skip / pool out of it output zeros (and node 2 then too)
        "|none~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|skip_connect~1|skip_connect~2|":
            "|none~0|+|skip_connect~0|none~1|+|none~0|none~1|skip_connect~2|",
        # a conv out of a zero node is kept: conv(0) + bias is not zero (synflow) or not exactly (BN)
        "|none~0|+|none~0|nor_conv_1x1~1|+|nor_conv_1x1~0|none~1|nor_conv_3x3~2|":
            "|none~0|+|none~0|nor_conv_1x1~1|+|nor_conv_1x1~0|none~1|nor_conv_3x3~2|",
    }
    for arch, want in cases.items():
        assert space.format_arch(space.prune_dead_edges(space.parse(arch))) == want, arch
    every = space.all_encodings()
    pruned = space.prune_dead_edges(every)
    np.testing.assert_array_equal(space.prune_dead_edges(pruned), pruned)  # a fixed point
    assert len(np.unique(pruned, axis=0)) == 10_405
    unchanged = (pruned == every).all(1)
    assert unchanged[np.asarray(space.encoding_to_code(ARCHS))].tolist() == [True, True, True, True]


def test_pruned_architectures_score_as_their_pruned_form(setup):
    """Every prunable proxy scores an architecture and its pruned form alike; NASWOT does not (so it is not prunable)."""
    _, images, labels = setup
    every = np.arange(space.NUM_ARCHS)
    target = batched.pruned_codes(every)
    changed = every[target != every]
    pick = np.random.default_rng(0).choice(changed, 10, replace=False)
    codes = np.concatenate([pick, target[pick]])
    names = ["snip", "grasp", "fisher", "jacob_cov", "synflow", "nwot"]
    assert [PROXIES[n].prunable for n in names] == [True] * 5 + [False]
    result = batched.score_archs(codes, names, CFG, images=images, labels=labels, chunk=len(codes), prune=False)
    assert result.networks == len(codes) and not result.pruned
    for n in names[:-1]:
        np.testing.assert_allclose(result.scores[n][:10], result.scores[n][10:], rtol=1e-5, err_msg=n)
    nwot = result.scores["nwot"]
    assert not np.allclose(nwot[:10], nwot[10:], rtol=1e-3), "pruning should change NASWOT's codes"


def _conv_on_zero_node(enc):
    """Whether a conv edge leaves a node that every path from the input misses (an all-zero node)."""
    zero = {0: False}
    for node in range(1, space.NUM_NODES):
        zero[node] = all(enc[e] == 0 or (enc[e] in (1, 4) and zero[src])
                         for e, (src, dst) in enumerate(space.EDGES) if dst == node)
    return any(enc[e] in (2, 3) and zero[src] for e, (src, _) in enumerate(space.EDGES))


def test_score_archs_scores_each_pruned_cell_once(setup):
    _, images, labels = setup
    rng = np.random.default_rng(1)
    every = np.arange(space.NUM_ARCHS)
    target = batched.pruned_codes(every)
    pick = rng.choice(every[target != every], 15, replace=False)
    codes = rng.permutation(np.concatenate([pick, target[pick], rng.choice(every, 10, replace=False)]))
    names = ["snip", "synflow"]
    plain = batched.score_archs(codes, names, CFG, images=images, labels=labels, chunk=len(codes), prune=False)
    pruned = batched.score_archs(codes, names, CFG, images=images, labels=labels, chunk=10, prune=True)
    assert pruned.pruned and pruned.networks == len(np.unique(batched.pruned_codes(codes))) < len(codes)
    # Cells with a conv out of an all-zero node normalise a constant (conv(0) + bias): in
    # float32 their scores move with the chunk they run in (rounding times 1/sqrt(eps)),
    # pruned or not; every other cell agrees to rounding.
    steady = np.array([not _conv_on_zero_node(e) for e in np.asarray(space.code_to_encoding(codes))])
    assert 0 < steady.sum() < len(codes)
    for n in names:
        np.testing.assert_allclose(pruned.scores[n][steady], plain.scores[n][steady], rtol=1e-5, err_msg=n)
        np.testing.assert_allclose(pruned.scores[n], plain.scores[n], rtol=1e-2, err_msg=n)
    # a proxy that is not prunable turns pruning off for the whole call
    assert not batched.score_archs(codes[:2], ["snip", "params"], CFG, images=images, labels=labels).pruned


def test_pack_chunks_places_every_code_once_within_the_slot_bound():
    codes = np.unique(batched.pruned_codes(np.arange(space.NUM_ARCHS)))
    rows, source = batched.pack_chunks(codes, 50)
    assert len(rows) % 50 == 0
    assert sorted(source[source >= 0].tolist()) == list(range(len(codes)))
    np.testing.assert_array_equal(rows[source >= 0], codes[source[source >= 0]])
    assert (rows[source < 0] == 0).all()  # padding: the all-none cell, which takes no slot
    enc = np.asarray(space.code_to_encoding(codes))
    share = np.stack([(enc == op).sum(0) for op in range(1, space.NUM_OPS)]).max(0) / len(codes)
    bound = np.ceil(50 * share)
    for start in range(0, len(rows), 50):
        assert (np.asarray(batched.required_capacity(np.asarray(space.code_to_encoding(rows[start:start + 50])),
                                                     per_edge=True)) <= bound).all()
    assert len(rows) // 50 <= -(-len(codes) // 50) + 5  # only a few chunks more than a perfect packing
