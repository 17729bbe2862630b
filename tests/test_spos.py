"""SPOS supernet training, population evaluation, searchers in weight-sharing mode, Kendall τ, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas.cli import main
from jnas.search import discrete, oneshot, spos
from jnas.search.darts import DartsConfig, cross_entropy
from jnas.spaces import nb201
from jnas.supernet import nb201 as supernet

REAL_TABLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nb201" / "nb201_cifar10.csv"
needs_table = pytest.mark.skipif(not REAL_TABLE.is_file(), reason=f"NAS-Bench-201 table absent at {REAL_TABLE}")

CFG = supernet.SupernetConfig(channels=2, cells=1, num_classes=3, in_channels=1, image_size=8)
# one compiled single-cell forward for the reference computations (eager op-by-op is slow)
apply_one = jax.jit(lambda params, images, encoding: supernet.apply(params, images, nb201.one_hot(encoding), CFG))


def tiny_batch(n=12, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CFG.num_classes, n).astype(np.int32)
    # class-dependent mean so that the batch is learnable
    images = rng.normal(size=(n, 8, 8, 1)).astype(np.float32) + labels[:, None, None, None].astype(np.float32)
    return images, labels


@pytest.fixture(scope="module")
def trained():
    """A few SPOS steps on a fixed batch (lr 0.1, no weight decay) and the jitted step."""
    trainer = spos.make_spos(CFG, total_steps=20, optimizer_config=DartsConfig(w_lr=0.1, w_weight_decay=0.0))
    state0 = trainer.init(jax.random.key(0))
    images, labels = tiny_batch()
    batch = spos.Batch(jnp.asarray(images), jnp.asarray(labels))
    state, trace = state0, []
    for _ in range(12):
        state, metrics = trainer.step(state, batch)
        trace.append(metrics)
    return trainer, state0, state, trace, (images, labels)


def mean_loss_over_cells(params, images, labels, encodings):
    losses = [cross_entropy(apply_one(params, images, e), labels) for e in encodings]
    return float(np.mean(losses))


def test_spos_step_samples_fold_in_paths_trains_and_compiles_once(trained):
    trainer, state0, state, trace, (images, labels) = trained
    assert int(state.step) == 12
    # step t's path is sample(fold_in(path_key, t)): reproducible, and it varies
    expected = [np.asarray(nb201.sample(jax.random.fold_in(state0.key, t))) for t in range(12)]
    np.testing.assert_array_equal(np.stack([np.asarray(m["encoding"]) for m in trace]), np.stack(expected))
    assert len({tuple(e) for e in expected}) > 1
    assert trainer.step._cache_size() == 1  # different paths, one compilation
    # it trains: the loss over a fixed set of cells on the batch goes down
    cells = np.asarray(nb201.sample(jax.random.key(7), (6,)))
    before = mean_loss_over_cells(state0.params, images, labels, cells)
    after = mean_loss_over_cells(state.params, images, labels, cells)
    assert after < before - 0.05, (before, after)


def test_spos_step_updates_only_the_sampled_path(trained):
    """First step (momentum buffer zero, no weight decay): kernels of ops off the path stay put."""
    trainer, state0, _, trace, (images, labels) = trained
    state1, metrics = trainer.step(state0, spos.Batch(jnp.asarray(images), jnp.asarray(labels)))
    encoding = np.asarray(metrics["encoding"])
    conv1, conv3 = nb201.OPS.index("nor_conv_1x1"), nb201.OPS.index("nor_conv_3x3")
    for stage0, stage1 in zip(state0.params["stages"], state1.params["stages"]):
        for edge, op in enumerate(encoding):
            w1_moved = not np.array_equal(stage0["w1"][:, edge], stage1["w1"][:, edge])
            w3_moved = not np.array_equal(stage0["w3"][:, edge], stage1["w3"][:, edge])
            if op != conv1:
                assert not w1_moved, (edge, op)
            if op != conv3:
                assert not w3_moved, (edge, op)


def test_evaluate_population_equals_a_loop_and_a_hand_computation(trained):
    _, _, state, _, _ = trained
    images, labels = tiny_batch(n=20, seed=3)
    encodings = np.asarray(nb201.sample(jax.random.key(11), (7,)))
    batched = np.asarray(spos.evaluate_population(state.params, encodings, images, labels, CFG, batch_size=8, chunk_size=3))
    looped = np.array([float(spos.evaluate_population(state.params, e, images, labels, CFG, batch_size=8)) for e in encodings])
    # accuracies are counts / 16: the vmapped and single evaluations must agree exactly
    np.testing.assert_array_equal(batched, looped)
    # by hand: two batches of 8 (the last 4 images dropped), BN statistics per batch
    hand = []
    for e in encodings:
        correct = 0
        for b in range(2):
            logits = apply_one(state.params, images[8 * b : 8 * b + 8], e)
            correct += int(np.sum(np.argmax(np.asarray(logits), -1) == labels[8 * b : 8 * b + 8]))
        hand.append(correct / 16)
    np.testing.assert_array_equal(batched, np.asarray(hand, np.float32))
    assert batched.shape == (7,)


@pytest.fixture(scope="module")
def fitness_setup(trained):
    _, _, state, _, _ = trained
    images, labels = tiny_batch(n=16, seed=5)
    image_batches, label_batches = spos.batch_eval_data(images, labels, 8)
    data = oneshot.SupernetFitnessData(state.params, jnp.asarray(image_batches), jnp.asarray(label_batches))
    return data, oneshot.supernet_fitness(CFG), (images, labels)


def test_vmapped_runs_equal_runs_one_by_one(trained, fitness_setup):
    data, fitness_fn, (images, labels) = fitness_setup
    searcher = discrete.make("rea", population_size=3, sample_size=2)
    together = oneshot.run_searchers(searcher, fitness_fn, data, num_runs=3, num_queries=6, seed=4)
    assert together.encodings.shape == (3, 6, 6) and together.fitness.shape == (3, 6)
    for i in range(3):
        alone = oneshot.run_searchers(searcher, fitness_fn, data, num_runs=1, num_queries=6, seed=4, start=i)
        np.testing.assert_array_equal(alone.encodings[0], together.encodings[i])
        np.testing.assert_allclose(alone.fitness[0], together.fitness[i], rtol=1e-6)
    # fitness is the held-out accuracy (%) of the asked cell
    expected = []
    for e in together.encodings.reshape(-1, 6):
        logits = [np.asarray(apply_one(data.params, images[b : b + 8], e)) for b in (0, 8)]
        expected.append(100 * np.mean(np.argmax(np.concatenate(logits), -1) == labels))
    np.testing.assert_allclose(together.fitness.reshape(-1), expected, rtol=1e-6)
    # best = first best-fitness query of each run
    best = np.argmax(together.fitness, axis=1)
    np.testing.assert_array_equal(together.best_encoding, together.encodings[np.arange(3), best])
    np.testing.assert_array_equal(together.best_fitness, together.fitness.max(axis=1))
    # REA's first population_size queries are random, then children differ in one edge from a member
    assert int(together.state.num_told[0]) == 6


@pytest.mark.parametrize("algo", ["reinforce", "local"])  # random: in the CLI test
def test_other_searchers_run_deterministically(fitness_setup, algo):
    data, fitness_fn, _ = fitness_setup
    searcher = discrete.make(algo)
    first = oneshot.run_searchers(searcher, fitness_fn, data, num_runs=2, num_queries=3, seed=1)
    second = oneshot.run_searchers(searcher, fitness_fn, data, num_runs=2, num_queries=3, seed=1)
    np.testing.assert_array_equal(first.encodings, second.encodings)
    np.testing.assert_array_equal(first.fitness, second.fitness)
    assert np.all((first.fitness >= 0) & (first.fitness <= 100))


def test_kendall_tau_hand_cases_and_scipy():
    assert oneshot.kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # C=2, D=1
    assert oneshot.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(oneshot.kendall_tau([1, 1, 1], [1, 2, 3]))
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, 300)  # many ties: exercises tau-b's correction
    y = x + rng.normal(size=300).round(1)
    assert oneshot.kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, rel=1e-9)
    with pytest.raises(ValueError):
        oneshot.kendall_tau([1, 2], [1, 2, 3])


@needs_table
def test_cli_evolve_supernet_writes_result(tmp_path, capsys):
    out = tmp_path / "sn"
    argv = ["evolve", "--supernet", "--table", str(REAL_TABLE), "--algo", "random", "--dataset", "digits",
            "--limit", "64", "--channels", "2", "--cells", "1", "--batch-size", "8", "--train-steps", "3",
            "--queries", "3", "--runs", "2", "--kendall-cells", "20", "--eval-images", "16", "--seed", "0", "--out", str(out),
            "--json", "--no-progress"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    result = json.loads((out / "result.json").read_text())
    assert summary["kendall_tau"] == result["kendall"]["tau_b"] and -1 <= summary["kendall_tau"] <= 1
    assert result["config"]["train_steps"] == 3 and result["history"][-1]["step"] == 3
    assert len(result["kendall"]["codes"]) == len(set(result["kendall"]["codes"])) == 20
    assert len(result["per_run"]) == 2
    for row in result["per_run"]:
        nb201.parse(row["arch"])
        assert 0 <= row["supernet_acc"] <= 100 and 10 <= row["c10_test_acc_200"] <= 95
    assert result["test_mean"] == pytest.approx(np.mean([r["c10_test_acc_200"] for r in result["per_run"]]), abs=1e-3)
    assert result["dataset"]["held_out_images"] == 16 and result["seconds"]["total"] > 0
    # a finished run is not overwritten
    assert main(argv) == 2
    assert "already holds a finished run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--supernet", "--budget-seconds", "100"], "--budget-seconds belongs to the tabular mode"),
        (["--channels", "4"], "--channels only apply with --supernet"),
        (["--supernet", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--supernet", "--queries", "0"], "--queries"),
        (["--supernet", "--table", "/nonexistent/t.csv"], "/nonexistent/t.csv"),
    ],
)
def test_cli_supernet_bad_input_is_one_line_and_exit_2(argv, fragment, tmp_path, capsys):
    try:
        code = main(["evolve", *argv, "--out", str(tmp_path / "o")])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err and fragment in lines[0], err
    assert not (tmp_path / "o" / "result.json").exists()


@needs_table
@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--dataset", "fashion_mnist", "--data-dir", "/nonexistent/jnas-data"], "/nonexistent/jnas-data"),
        (["--limit", "4", "--batch-size", "8"], "too small for batch_size 8"),
    ],
)
def test_cli_supernet_bad_data_is_one_line(extra, fragment, tmp_path, capsys):
    code = main(["evolve", "--supernet", "--table", str(REAL_TABLE), *extra, "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "o" / "result.json").exists()
