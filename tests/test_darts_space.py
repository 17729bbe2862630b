"""The DARTS space: genotypes, S1–S4, derivation, parameter counts, the search network."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas.evaluation import network as enet
from jnas.spaces import darts as space
from jnas.supernet import darts as sd
from jnas.supernet import darts_ops as dops

# ----------------------------------------------------------------------------- genotypes


@pytest.mark.parametrize("name", ["DARTS_V1", "DARTS_V2", "PC_DARTS", "PC_DARTS_IMAGENET"])
def test_published_genotypes_round_trip(name):
    genotype = space.GENOTYPES[name]
    text = space.format_genotype(genotype)
    assert text.startswith("Genotype(normal=[('") and text.endswith("reduce_concat=[2, 3, 4, 5])")
    assert space.parse(text) == genotype
    assert space.format_genotype(space.parse(text)) == text
    assert str(genotype) == text
    assert space.from_name_or_text(name.lower()) == genotype


def test_darts_v2_text_is_the_reference_repr():
    expected = (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
        "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
        "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
        "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
        "reduce_concat=[2, 3, 4, 5])"
    )
    assert space.format_genotype(space.DARTS_V2) == expected
    assert space.GENOTYPES["DARTS"] == space.DARTS_V2


def test_parse_accepts_range_concat_and_whitespace():
    text = str(space.PC_DARTS).replace("[2, 3, 4, 5]", "range(2, 6)")
    assert "range(2, 6)" in text
    assert space.parse("  " + text.replace(", ", ",\n ") + "\n") == space.PC_DARTS


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("Genotype(normal=[('sep_conv_9x9', 0)] * 8", "not well formed"),
        (str(space.DARTS_V2).replace("'dil_conv_3x3', 2", "'dil_conv_9x9', 2"), "normal[7]: unknown op 'dil_conv_9x9'"),
        (str(space.DARTS_V2).replace("('max_pool_3x3', 1)], reduce_concat", "('max_pool_3x3', 6)], reduce_concat"),
         "reduce[7]: input 6"),
        (str(space.DARTS_V2).replace(", reduce_concat=[2, 3, 4, 5]", ""), "missing field(s) reduce_concat"),
        (str(space.DARTS_V2).replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[2, 3, 9]"), "normal_concat[2]: node 9"),
        (str(space.DARTS_V2).replace("('sep_conv_3x3', 0), ", "", 1), "normal: expected two"),
        ("Network(normal=[])", "must be Genotype("),
        (str(space.DARTS_V2).replace("('sep_conv_3x3', 0)", "('sep_conv_3x3', '0')", 1), "normal[0] input"),
        ("NOT_A_GENOTYPE", "known names"),
    ],
)
def test_parse_errors_name_the_bad_part(text, fragment):
    with pytest.raises(space.GenotypeError, match=re.escape(fragment)):
        space.from_name_or_text(text)


def test_parse_never_evaluates_code():
    with pytest.raises(space.GenotypeError):
        space.parse("Genotype(normal=__import__('os').getcwd(), normal_concat=[], reduce=[], reduce_concat=[])")


# ----------------------------------------------------------------------------- spaces


def test_edges_and_nodes():
    assert space.NUM_EDGES == 14
    assert space.EDGES[:5] == ((0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
    assert [s.stop - s.start for s in space.NODE_EDGES] == [2, 3, 4, 5]


def test_robust_darts_op_sets():
    assert space.get_space("darts").ops == (
        "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
        "dil_conv_3x3", "dil_conv_5x5")
    assert space.get_space("s2").ops == ("skip_connect", "sep_conv_3x3")
    assert space.get_space("darts-s3").ops == ("none", "skip_connect", "sep_conv_3x3")
    assert space.get_space("darts-s4").ops == ("noise", "sep_conv_3x3")
    s1 = space.get_space("darts-s1")
    assert s1.ops == ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3", "dil_conv_5x5")
    mask = s1.mask()
    assert mask.shape == (2, 14, 6) and (mask.sum(-1) == 2).all()
    allowed = lambda t, e: {s1.ops[o] for o in np.flatnonzero(mask[t, e])}  # noqa: E731
    # spot checks against RobustDARTS src/spaces.py primitives_1
    assert allowed(0, 0) == {"skip_connect", "dil_conv_3x3"}
    assert allowed(0, 5) == {"max_pool_3x3", "skip_connect"}
    assert allowed(0, 13) == {"dil_conv_3x3", "dil_conv_5x5"}
    assert allowed(1, 1) == {"max_pool_3x3", "dil_conv_3x3"}
    assert allowed(1, 6) == {"max_pool_3x3", "sep_conv_3x3"}
    assert allowed(1, 13) == {"skip_connect", "dil_conv_5x5"}
    for name in ("darts", "darts-s2", "darts-s3", "darts-s4"):
        assert space.edge_mask(name).all()
    with pytest.raises(ValueError, match="unknown DARTS search space"):
        space.get_space("darts-s5")


# ----------------------------------------------------------------------------- derive


def test_derive_keeps_two_strongest_edges_by_best_non_none_op():
    ops = space.OPS
    w = np.full((14, 8), 0.01)
    # node 2 (edges 0, 1): 'none' is huge on edge 0 but ignored; edge 1 wins via dil_conv_5x5
    w[0, ops.index("none")] = 0.9
    w[0, ops.index("sep_conv_3x3")] = 0.2
    w[1, ops.index("dil_conv_5x5")] = 0.3
    # node 3 (edges 2, 3, 4): edges 4 and 2 win, strongest first
    w[2, ops.index("max_pool_3x3")] = 0.5
    w[3, ops.index("avg_pool_3x3")] = 0.1
    w[4, ops.index("skip_connect")] = 0.6
    # node 4 (edges 5..8), node 5 (edges 9..13)
    w[8, ops.index("sep_conv_5x5")] = 0.7
    w[6, ops.index("sep_conv_3x3")] = 0.4
    w[13, ops.index("dil_conv_3x3")] = 0.8
    w[9, ops.index("skip_connect")] = 0.75
    g = space.derive(w, w[::-1].copy(), ops)
    assert g.normal == (
        ("dil_conv_5x5", 1), ("sep_conv_3x3", 0),
        ("skip_connect", 2), ("max_pool_3x3", 0),
        ("sep_conv_5x5", 3), ("sep_conv_3x3", 1),
        ("dil_conv_3x3", 4), ("skip_connect", 0),
    )
    assert g.normal_concat == (2, 3, 4, 5)
    assert space.parse(str(g)) == g


def test_derive_ties_keep_the_lower_input_and_respect_a_mask():
    w = np.full((14, 2), 0.5)
    g = space.derive(w, w, ("skip_connect", "sep_conv_3x3"))
    assert [src for _, src in g.normal] == [0, 1] * 4
    assert all(op == "skip_connect" for op, _ in g.normal)  # argmax: first of equals
    s1 = space.get_space("darts-s1")
    weights = np.zeros((2, 14, 6))
    weights[..., s1.ops.index("sep_conv_3x3")] = 1.0  # allowed on few edges only
    g = space.derive(weights[0], weights[1], s1.ops, s1.mask())
    for t, cell in enumerate((g.normal, g.reduce)):
        for k, (op, src) in enumerate(cell):
            edge = space.EDGES.index((src, 2 + k // 2))
            assert s1.mask()[t, edge, s1.ops.index(op)], (t, k, op)


# ----------------------------------------------------------------------------- evaluation network


@pytest.mark.parametrize("auxiliary, expected", [(False, 3349342), (True, 3825768)])
def test_darts_v2_parameter_count_matches_reference(auxiliary, expected):
    config = enet.NetworkConfig(channels=36, layers=20, num_classes=10, auxiliary=auxiliary)
    assert enet.count_params(space.DARTS_V2, config) == expected


@pytest.mark.parametrize("auxiliary, expected", [(False, "3349342"), (True, "3825768")])
def test_model_params_cli(capsys, auxiliary, expected):
    from jnas.cli import main

    argv = ["model", "params", "--space", "darts", "--genotype", "DARTS_V2", "--layers", "20", "--channels", "36"]
    assert main(argv + (["--auxiliary"] if auxiliary else [])) == 0
    assert capsys.readouterr().out.strip() == expected
    # the same genotype given as text
    assert main(argv[:5] + [str(space.DARTS_V2)] + argv[6:] + (["--auxiliary"] if auxiliary else [])) == 0
    assert capsys.readouterr().out.strip() == expected


def test_model_params_cli_bad_genotype_is_one_line(capsys):
    from jnas.cli import main

    assert main(["model", "params", "--genotype", "Genotype(normal=[('conv_9x9', 0)])"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jnas: error:") and "\n" not in err


def test_eval_network_counts_allocated_params():
    genotype = space.PC_DARTS
    config = enet.NetworkConfig(channels=4, layers=3, num_classes=10, in_channels=1, auxiliary=True)
    params, stats = enet.network(genotype, config).init(jax.random.key(0))
    assert sum(int(np.prod(v.shape)) for v in params.values()) == enet.count_params(genotype, config)
    assert all(k.endswith((".mean", ".var")) for k in stats)


# ----------------------------------------------------------------------------- ops


def test_channel_shuffle_matches_nchw_reference():
    x = np.arange(2 * 3 * 3 * 8, dtype=np.float32).reshape(2, 3, 3, 8)
    nchw = x.transpose(0, 3, 1, 2)
    ref = nchw.reshape(2, 4, 2, 3, 3).transpose(0, 2, 1, 3, 4).reshape(2, 8, 3, 3).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(np.asarray(dops.channel_shuffle(jnp.asarray(x), 4)), ref)


@pytest.mark.parametrize("size", [8, 7])
def test_stride_two_ops_agree_on_shape(size):
    x = jax.random.normal(jax.random.key(0), (2, size, size, 4))
    out = (size + 1) // 2
    bn = lambda y, path: y  # noqa: E731
    for name in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "max_pool_3x3",
                 "avg_pool_3x3", "skip_connect"):
        shapes = dops.op_param_shapes(name, 4, 2, affine=False)
        params = {f"p.{k}": jnp.ones(s) for k, (s, _) in shapes.items()}
        assert dops.apply_op(name, x, 2, params, "p", bn).shape == (2, out, out, 4), name
    assert dops.max_pool_2x2(x).shape == (2, out, out, 4)
    # max pool stride 2 equals every other stride-1 window
    np.testing.assert_array_equal(dops.max_pool_3x3(x, 2), dops.max_pool_3x3(x, 1)[:, ::2, ::2])


# ----------------------------------------------------------------------------- search network

TINY = dict(channels=4, layers=3, image_size=8, in_channels=1, num_classes=10)


def _images(n=2):
    return jax.random.normal(jax.random.key(7), (n, 8, 8, 1))


def test_search_network_forward_and_grad():
    # S3 (none, skip, sep_conv_3x3) keeps the compile short; the full space is traced below
    net = sd.search_network(sd.DartsSupernetConfig(space="darts-s3", **TINY))
    assert net.ops == ("none", "skip_connect", "sep_conv_3x3")
    params = net.init(jax.random.key(0))
    arch = net.init_arch(jax.random.key(1))
    assert set(arch) == {"alpha"} and arch["alpha"].shape == (2, 14, 3)
    assert 0 < float(jnp.std(arch["alpha"])) < 1e-2  # 1e-3 * N(0, 1)
    labels = jnp.array([1, 2])

    def loss(p, a):
        logits = net.apply(p, _images(), a)
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(2), labels]), logits

    (value, logits), (gp, ga) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, arch)
    assert logits.shape == (2, 10) and np.isfinite(float(value))
    g = np.asarray(ga["alpha"])
    assert np.isfinite(g).all()
    # both the normal and the reduction α get gradient (cells 1 and 2 reduce)
    assert np.abs(g[0]).sum() > 0 and np.abs(g[1]).sum() > 0
    assert all(np.isfinite(np.asarray(v)).all() for v in gp.values())
    genotype = space.parse(net.derive(arch))
    assert all(op != "none" for op, _ in genotype.normal + genotype.reduce)


def test_vmap_over_alpha_equals_loop_and_no_recompile():
    # S4: the noise op's key comes from the batch, so every α sees the same noise
    net = sd.search_network(sd.DartsSupernetConfig(space="darts-s4", **TINY))
    params = net.init(jax.random.key(0))
    archs = [net.init_arch(jax.random.key(k)) for k in range(3)]
    archs = [{"alpha": a["alpha"] * 1000.0} for a in archs]  # far apart
    traces = []

    def forward(p, x, a):
        traces.append(1)
        return net.apply(p, x, a)

    f = jax.jit(forward)
    looped = [np.asarray(f(params, _images(), a)) for a in archs]
    assert len(traces) == 1  # one compile serves every α
    assert not np.allclose(looped[0], looped[1])
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *archs)
    vmapped = np.asarray(jax.jit(jax.vmap(net.apply, in_axes=(None, None, 0)))(params, _images(), stacked))
    # float32 sums in a different association: not bit-exact
    np.testing.assert_allclose(vmapped, np.stack(looped), rtol=1e-4, atol=1e-5)


def test_pcdarts_partial_channels_and_edge_normalization():
    config = sd.DartsSupernetConfig(space="darts", **TINY)
    net = sd.search_network(config, partial_channels=2, edge_normalization=True)
    params = net.init(jax.random.key(0))
    arch = net.init_arch(jax.random.key(1))
    assert arch["alpha"].shape == (2, 14, 8) and arch["beta"].shape == (2, 14)
    # mixed-op weights are C/K wide: cell 0 (C=4) pointwise kernels are 2x2
    assert params["cells.0.n0.sep_conv_3x3.pw1"].shape == (4, 2, 2)
    assert params["cells.1.n0.skip_connect.fr1"].shape[1:] == (8 // 2, 8 // 2 // 2)
    out = jax.eval_shape(net.apply, params, jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32), arch)
    assert out.shape == (2, 10)
    with pytest.raises(ValueError, match="partial_channels"):
        sd.search_network(config, partial_channels=3)
    # edge normalization enters derive: β decides between equally strong edges
    alpha = np.zeros((2, 14, 8))
    alpha[:, :, space.OPS.index("sep_conv_3x3")] = 2.0
    beta = np.zeros((2, 14))
    beta[:, 1] = 3.0  # node 2 prefers input 1
    genotype = space.parse(net.derive({"alpha": alpha, "beta": beta}))
    assert genotype.normal[0] == ("sep_conv_3x3", 1)
    assert space.parse(net.derive({"alpha": alpha, "beta": np.zeros((2, 14))})).normal[0] == ("sep_conv_3x3", 0)


def test_s1_mask_in_op_logits_and_derive():
    net = sd.search_network(sd.DartsSupernetConfig(space="darts-s1", **TINY))
    mask = space.edge_mask("darts-s1")
    arch = net.init_arch(jax.random.key(0))
    assert arch["alpha"].shape == (2, 14, 6)
    logits = np.asarray(net.op_logits(arch))
    assert (logits[~mask] == sd.MASKED_LOGIT).all()
    weights = np.asarray(jax.nn.softmax(net.op_logits(arch), axis=-1))
    assert (weights[~mask] == 0).all()
    np.testing.assert_allclose(weights[mask], 0.5, atol=1e-2)
    # a disallowed op with a huge α is never chosen
    alpha = np.zeros((2, 14, 6))
    alpha[..., net.ops.index("avg_pool_3x3")] = 50.0
    genotype = space.parse(net.derive({"alpha": alpha}))
    for t, cell in enumerate((genotype.normal, genotype.reduce)):
        for k, (op, src) in enumerate(cell):
            assert mask[t, space.EDGES.index((src, 2 + k // 2)), net.ops.index(op)]
    params = net.init(jax.random.key(0))
    # only the allowed ops own weights: in the normal cell dil_conv_5x5 is allowed on
    # edges 1, 2 (from nodes 1, 0), 12, 13 (from nodes 3, 4), and never on node 2's edges
    assert params["cells.0.n0.dil_conv_5x5.pw"].shape[0] == 1
    assert "cells.0.n2.dil_conv_5x5.pw" not in params
