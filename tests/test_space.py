"""The NAS-Bench-201 search space (encodings, arch strings) and the benchmark table's index maps."""

from __future__ import annotations

import csv

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas.benchmarks import nb201 as bench
from jnas.spaces import nb201

ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
BEST_VALID = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
ROW0 = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
GOOD = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


# --------------------------------------------------------------------------- real table


@pytest.fixture(scope="module")
def real_csv_rows():
    path = bench.default_path()
    if path is None or not path.is_file():
        pytest.skip("NAS-Bench-201 table not found (../shared/data/nb201/nb201_cifar10.csv or $JNAS_NB201_TABLE)")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return path, rows


@pytest.fixture(scope="module")
def real_table(real_csv_rows):
    path, _ = real_csv_rows
    return bench.load_table(path)


def test_every_row_round_trips_through_parse_and_the_index_maps(real_csv_rows, real_table):
    _, rows = real_csv_rows
    assert len(rows) == nb201.NUM_ARCHS
    seen = set()
    for row_number, row in enumerate(rows):
        arch, index = row["arch"], int(row["index"])
        assert index == row_number, f"row {row_number} holds index {index}"
        encoding = nb201.parse(arch)
        assert encoding.shape == (6,) and encoding.dtype == np.int32
        assert nb201.format_arch(encoding) == arch
        assert real_table.index_of(arch) == index
        assert real_table.arch_of(index) == arch
        if row_number % 101 == 0:  # the encoding-valued variants, on a sample (each call is a few eager jnp ops)
            assert real_table.index_of(encoding) == index
            np.testing.assert_array_equal(real_table.encoding_of(index), encoding)
        seen.add(arch)
    assert len(seen) == nb201.NUM_ARCHS


def test_table_columns_match_the_csv(real_csv_rows, real_table):
    _, rows = real_csv_rows
    for row in rows[::97]:
        code = int(nb201.encoding_to_code(nb201.parse(row["arch"])))
        for column in ("c10_valid_acc_200", "c10_test_acc_200", "cifar10_params_mb", "cifar10_train_time_200_s"):
            assert real_table[column][code] == float(row[column]), column


def test_known_anchors(real_table):
    assert real_table.index_of(ALL_SKIP) == 1835
    assert real_table.arch_of(1835) == ALL_SKIP
    assert real_table.lookup(ALL_SKIP)["c10_test_acc_200"] == pytest.approx(54.30, abs=0.005)
    assert real_table.arch_of(0) == ROW0
    best_code = int(np.argmax(real_table["c10_valid_acc_200"]))
    assert int(real_table.index[best_code]) == 6111
    assert real_table.arch_of(6111) == BEST_VALID
    found = real_table.lookup(BEST_VALID)
    assert found["index"] == 6111
    assert found["c10_valid_acc_200"] == pytest.approx(91.61, abs=0.005)
    assert found["c10_test_acc_200"] == pytest.approx(94.37, abs=0.005)


def test_encoding_of_rejects_out_of_range_index(real_table):
    for bad in (-1, nb201.NUM_ARCHS):
        with pytest.raises(IndexError, match=str(bad)):
            real_table.encoding_of(bad)


# --------------------------------------------------------------------------- parse errors


@pytest.mark.parametrize(
    "arch, fragment",
    [
        # wrong number of '+' groups
        ("|none~0|+|none~0|none~1|", "2 node group"),
        ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|+|none~0|", "4 node group"),
        # a group not enclosed in '|'
        ("|none~0|+none~0|none~1|+|none~0|none~1|none~2|", "'none~0|none~1|'"),
        ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2", "'|none~0|none~1|none~2'"),
        # wrong edge count in a group
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", "has 1 edge(s), expected 2"),
        ("|none~0|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "has 2 edge(s), expected 1"),
        # unknown op: the message names it
        ("|none~0|+|none~0|conv_5x5~1|+|none~0|none~1|none~2|", "'conv_5x5'"),
        # wrong source node
        ("|none~0|+|none~0|none~0|+|none~0|none~1|none~2|", "'none~0'"),
        ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "names source 1, expected 0"),
        # malformed token
        ("|none0|+|none~0|none~1|+|none~0|none~1|none~2|", "'none0'"),
        ("", "1 node group"),
    ],
)
def test_parse_errors_name_the_offending_part(arch, fragment):
    with pytest.raises(nb201.ArchStringError) as info:
        nb201.parse(arch)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", [None, 42, b"|none~0|", nb201.parse(GOOD)])
def test_parse_rejects_non_str(bad):
    with pytest.raises(nb201.ArchStringError, match=type(bad).__name__):
        nb201.parse(bad)


def test_parse_rejects_a_newline_inside_a_token():
    with pytest.raises(nb201.ArchStringError):
        nb201.parse("|none~0\n|+|none~0|none~1|+|none~0|none~1|none~2|")


def test_parse_known_strings():
    np.testing.assert_array_equal(nb201.parse(GOOD), [3, 3, 4, 1, 3, 1])
    np.testing.assert_array_equal(nb201.parse(ALL_SKIP), [1] * 6)
    assert nb201.format_arch([1] * 6) == ALL_SKIP
    assert nb201.format_arch(np.array([3, 3, 4, 1, 3, 1])) == GOOD


# --------------------------------------------------------------------------- encodings


def test_code_encoding_inverse_on_all_archs():
    codes = jnp.arange(nb201.NUM_ARCHS)
    encodings = nb201.code_to_encoding(codes)
    assert encodings.shape == (nb201.NUM_ARCHS, 6)
    np.testing.assert_array_equal(np.asarray(nb201.encoding_to_code(encodings)), np.arange(nb201.NUM_ARCHS))
    # an independent base-5 expansion
    expected = np.stack([(np.arange(nb201.NUM_ARCHS) // 5**e) % 5 for e in range(6)], axis=-1)
    np.testing.assert_array_equal(np.asarray(encodings), expected)
    # scalar inputs
    assert int(nb201.encoding_to_code([4, 0, 0, 0, 0, 1])) == 4 + 5**5
    np.testing.assert_array_equal(np.asarray(nb201.code_to_encoding(4 + 5**5)), [4, 0, 0, 0, 0, 1])


def test_all_encodings_unique_and_complete():
    encs = nb201.all_encodings()
    assert encs.shape == (nb201.NUM_ARCHS, 6)
    assert len({tuple(e) for e in encs.tolist()}) == nb201.NUM_ARCHS
    assert encs.min() == 0 and encs.max() == nb201.NUM_OPS - 1
    np.testing.assert_array_equal(np.asarray(nb201.encoding_to_code(encs)), np.arange(nb201.NUM_ARCHS))


def test_sample_in_range_and_jittable():
    chex.clear_trace_counter()
    sampler = jax.jit(chex.assert_max_traces(lambda key: nb201.sample(key, (500,)), n=1))
    draws = [np.asarray(sampler(jax.random.key(seed))) for seed in range(3)]
    for d in draws:
        assert d.shape == (500, 6) and d.dtype == np.int32
        assert d.min() >= 0 and d.max() < nb201.NUM_OPS
        # every op appears on every edge among 500 uniform draws (P(miss) ~ 6*5*0.8**500)
        for e in range(6):
            assert set(d[:, e].tolist()) == set(range(5))
    assert not np.array_equal(draws[0], draws[1])
    np.testing.assert_array_equal(np.asarray(nb201.sample(jax.random.key(0), (500,))), draws[0])
    assert nb201.sample(jax.random.key(0)).shape == (6,)


def test_mutate_changes_exactly_one_edge_to_another_op():
    parents = nb201.sample(jax.random.key(1), (400,))
    keys = jax.random.split(jax.random.key(2), 400)
    children = np.asarray(jax.jit(jax.vmap(nb201.mutate))(keys, parents))
    parents = np.asarray(parents)
    differs = children != parents
    np.testing.assert_array_equal(differs.sum(axis=1), np.ones(400, int))
    assert children.min() >= 0 and children.max() < nb201.NUM_OPS
    # every edge gets mutated, and every (parent op -> child op) change occurs somewhere
    assert set(np.nonzero(differs)[1].tolist()) == set(range(6))
    changes = {(int(p), int(c)) for p, c in zip(parents[differs], children[differs])}
    assert changes == {(p, c) for p in range(5) for c in range(5) if p != c}
    # unbatched and jitted on a single key give the same child
    single = jax.jit(nb201.mutate)(keys[0], jnp.asarray(parents[0]))
    np.testing.assert_array_equal(np.asarray(single), children[0])


def test_one_hot_shape_and_values():
    enc = jnp.array([0, 1, 2, 3, 4, 1])
    oh = nb201.one_hot(enc)
    assert oh.shape == (6, 5) and oh.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(oh), np.eye(5, dtype=np.float32)[[0, 1, 2, 3, 4, 1]])
    assert nb201.one_hot(nb201.sample(jax.random.key(0), (7, 3))).shape == (7, 3, 6, 5)


def test_derive_is_argmax_per_edge():
    weights = np.asarray(jax.random.normal(jax.random.key(3), (6, 5)))
    np.testing.assert_array_equal(nb201.derive(weights), [int(np.argmax(row)) for row in weights])
    # 'none' competes like any other op
    w = np.zeros((6, 5))
    w[:, 0] = 1.0
    np.testing.assert_array_equal(nb201.derive(w), np.zeros(6, int))
    enc = np.array([4, 3, 2, 1, 0, 2])
    np.testing.assert_array_equal(nb201.derive(np.asarray(nb201.one_hot(enc))), enc)
    with pytest.raises(ValueError, match=r"\(6, 5\)"):
        nb201.derive(np.zeros((5, 6)))


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (np.zeros(5, np.int32), "shape"),
        (np.zeros((1, 6), np.int32), "shape"),
        (np.zeros(6, np.float32), "dtype"),
        (np.zeros(6, bool), "dtype"),
        (np.array([0, 1, 2, 3, 4, 5]), r"\[0, 5\)"),
        (np.array([0, 1, 2, 3, -1, 0]), r"\[0, 5\)"),
    ],
)
def test_validate_encoding_rejects(bad, fragment):
    with pytest.raises(ValueError, match=fragment):
        nb201.validate_encoding(bad)


def test_validate_encoding_accepts_ints():
    out = nb201.validate_encoding([0, 1, 2, 3, 4, 0])
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [0, 1, 2, 3, 4, 0])
    np.testing.assert_array_equal(nb201.validate_encoding(jnp.array([4] * 6, jnp.int32)), [4] * 6)


# --------------------------------------------------------------------------- load_table errors

HEADER = list(bench.REQUIRED_COLUMNS)


def _synthetic_rows(seed=0):
    """All 15,625 archs with a random permutation as the official index, and made-up numbers."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(nb201.NUM_ARCHS)
    encs = nb201.all_encodings()
    rows = []
    for code in range(nb201.NUM_ARCHS):
        rows.append(
            {
                "index": str(perm[code]),
                "arch": nb201.format_arch(encs[code]),
                "c10_valid_acc_200": f"{code / 1000:.3f}",
                "c10_test_acc_200": f"{code / 500:.3f}",
                "cifar10_params_mb": "0.5",
                "cifar10_train_time_200_s": "1000.0",
            }
        )
    return perm, rows


def _write(path, rows, header=HEADER):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def synthetic():
    return _synthetic_rows()


def test_load_table_synthetic_round_trip(tmp_path, synthetic):
    perm, rows = synthetic
    table = bench.load_table(_write(tmp_path / "t.csv", rows))
    np.testing.assert_array_equal(table.index, perm)
    for code in (0, 1, 777, nb201.NUM_ARCHS - 1):
        arch = rows[code]["arch"]
        assert table.index_of(arch) == perm[code]
        assert table.arch_of(int(perm[code])) == arch
        assert table["c10_valid_acc_200"][code] == float(rows[code]["c10_valid_acc_200"])
    assert "c10_valid_acc_12" not in table.columns  # optional column absent


def test_load_table_missing_column(tmp_path, synthetic):
    _, rows = synthetic
    header = [c for c in HEADER if c != "c10_test_acc_200"]
    path = _write(tmp_path / "t.csv", rows[:3], header)
    with pytest.raises(bench.TableError, match="c10_test_acc_200"):
        bench.load_table(path)


def test_load_table_non_numeric_value_names_column_and_line(tmp_path, synthetic):
    _, rows = synthetic
    rows = [dict(r) for r in rows]
    rows[10]["c10_valid_acc_200"] = "n/a"  # data row 10 is file line 12 (header is line 1)
    path = _write(tmp_path / "t.csv", rows)
    with pytest.raises(bench.TableError) as info:
        bench.load_table(path)
    message = str(info.value)
    assert "c10_valid_acc_200" in message and ":12:" in message and "n/a" in message


def test_load_table_wrong_row_count(tmp_path, synthetic):
    _, rows = synthetic
    with pytest.raises(bench.TableError, match="15624 rows, expected 15625"):
        bench.load_table(_write(tmp_path / "short.csv", rows[:-1]))
    with pytest.raises(bench.TableError, match="3 rows"):
        bench.load_table(_write(tmp_path / "tiny.csv", rows[:3]))


def test_load_table_duplicate_arch_and_bad_index(tmp_path, synthetic):
    _, rows = synthetic
    dup = [dict(r) for r in rows]
    dup[5]["arch"] = dup[4]["arch"]
    with pytest.raises(bench.TableError, match="appears twice"):
        bench.load_table(_write(tmp_path / "dup.csv", dup))
    frac = [dict(r) for r in rows]
    frac[0]["index"] = "1.5"
    with pytest.raises(bench.TableError, match="'1.5'"):
        bench.load_table(_write(tmp_path / "frac.csv", frac))
    bad_arch = [dict(r) for r in rows]
    bad_arch[2]["arch"] = "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    with pytest.raises(bench.TableError, match=r":4:.*'conv'"):
        bench.load_table(_write(tmp_path / "arch.csv", bad_arch))


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_load_table_non_finite_index_is_a_table_error(tmp_path, synthetic, value):
    _, rows = synthetic
    rows = [dict(r) for r in rows]
    rows[0]["index"] = value
    with pytest.raises(bench.TableError, match=":2:"):
        bench.load_table(_write(tmp_path / "t.csv", rows))


def test_load_table_missing_file(tmp_path):
    with pytest.raises(bench.TableError, match="does not exist"):
        bench.load_table(tmp_path / "nope.csv")
