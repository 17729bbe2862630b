"""The simulated-budget protocol: accounting on a hand-made table, and the ``jnas evolve`` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas.benchmarks import protocol
from jnas.cli import main
from jnas.search import discrete
from jnas.spaces import nb201

REAL_TABLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nb201" / "nb201_cifar10.csv"

# A three-row "table" (codes 0, 1, 2). Code 0 has the best reward but is too dear to fit
# after the others; code 1 has the best test accuracy but not the best reward.
THREE_ROWS = protocol.TabularBenchmark(
    reward=jnp.array([90.0, 60.0, 70.0]),
    cost=jnp.array([300.0, 50.0, 200.0]),
    valid=jnp.array([91.0, 88.0, 89.5]),
    test=jnp.array([80.0, 97.0, 95.0]),
    params=jnp.array([1.0, 0.5, 0.2]),
)


def codes_to_encodings(codes):
    return jnp.asarray(nb201.code_to_encoding(jnp.asarray(codes)))


@pytest.fixture(scope="module")
def replay_run():
    """Queries 1, 2, 1, 0, 1 under a 500 s budget, and the compiled simulator (one trace)."""
    searcher = discrete.replay(codes_to_encodings([1, 2, 1, 0, 1]))
    simulate = jax.jit(lambda benchmark, budget: protocol.simulate(searcher, benchmark, jax.random.key(0), budget, 5))
    return simulate, simulate(THREE_ROWS, 500.0)


def test_charges_each_query_its_cost_until_the_budget(replay_run):
    _, result = replay_run
    # 50, 250, 300 fit; code 0 would bring 600 > 500 and ends the search; the last
    # query (code 1, 50 s) would still fit but comes after the end, so it is ignored
    np.testing.assert_array_equal(np.asarray(result.trace.counted), [True, True, True, False, False])
    np.testing.assert_allclose(np.asarray(result.trace.elapsed), [50, 250, 300, 300, 300])
    assert int(result.num_queries) == 3
    assert float(result.elapsed) == 300.0
    assert bool(result.exhausted)
    # the replay searcher was told only the counted queries
    assert int(result.state) == 3


def test_reports_the_test_accuracy_of_the_best_validation_arch(replay_run):
    _, result = replay_run
    assert int(result.best_code) == 2  # best reward among counted (70 > 60); code 0 never counted
    assert float(result.best_reward) == 70.0
    assert float(result.best_test) == 95.0  # not 97 (code 1, best test) nor 80 (code 0, best reward)
    assert float(result.best_valid) == 89.5
    np.testing.assert_array_equal(np.asarray(result.trace.best_code), [1, 2, 2, 2, 2])
    np.testing.assert_array_equal(np.asarray(result.trace.best_test), [97.0, 95.0, 95.0, 95.0, 95.0])


def test_a_larger_budget_counts_more_without_retracing(replay_run):
    simulate, _ = replay_run
    result = simulate(THREE_ROWS, 600.0)  # exactly enough for code 0 too (<= budget counts)
    np.testing.assert_array_equal(np.asarray(result.trace.counted), [True, True, True, True, False])
    assert float(result.elapsed) == 600.0
    assert int(result.best_code) == 0 and float(result.best_test) == 80.0
    tiny = simulate(THREE_ROWS, 10.0)  # not even the first query fits
    assert int(tiny.num_queries) == 0 and int(tiny.best_code) == -1 and np.isnan(float(tiny.best_test))
    assert simulate._cache_size() == 1


def test_ties_keep_the_first_best():
    benchmark = THREE_ROWS._replace(reward=jnp.array([50.0, 70.0, 70.0]))
    searcher = discrete.replay(codes_to_encodings([2, 1]))
    result = protocol.simulate(searcher, benchmark, jax.random.key(0), 1000.0, 2)
    assert int(result.best_code) == 2


def test_best_on_grid(replay_run):
    _, result = replay_run
    grid = np.array([0.0, 49.0, 50.0, 100.0, 250.0, 299.0, 300.0, 500.0])
    values = np.asarray(protocol.best_on_grid(result.trace, grid))
    # nothing has finished before 50 s; then the best-reward answer so far, as it would be reported
    np.testing.assert_array_equal(values, [np.nan, np.nan, 97.0, 97.0, 95.0, 95.0, 95.0, 95.0])


def test_nb201_benchmark_derives_the_12_epoch_cost():
    columns = {
        "c10_valid_acc_12": np.array([60.0, 70.0, 80.0]),
        "c10_valid_acc_200": np.array([85.0, 88.0, 90.0]),
        "c10_test_acc_200": np.array([88.0, 91.0, 93.0]),
        "cifar10_params_mb": np.array([0.1, 0.5, 1.5]),
        "cifar10_train_time_200_s": np.array([1000.0, 2000.0, 3000.0]),
    }
    benchmark = protocol.nb201_benchmark(columns)
    np.testing.assert_allclose(np.asarray(benchmark.cost), [60.0, 120.0, 180.0])
    np.testing.assert_array_equal(np.asarray(benchmark.reward), [60.0, 70.0, 80.0])
    np.testing.assert_array_equal(np.asarray(benchmark.test), [88.0, 91.0, 93.0])
    full = protocol.nb201_benchmark(columns, reward_epochs=200)
    np.testing.assert_allclose(np.asarray(full.cost), [1000.0, 2000.0, 3000.0])
    np.testing.assert_array_equal(np.asarray(full.reward), [85.0, 88.0, 90.0])
    with pytest.raises(ValueError, match="12 or 200"):
        protocol.nb201_benchmark(columns, reward_epochs=25)
    assert protocol.max_queries_for(benchmark, 12000.0) == 201  # 12000 / 60, plus the crossing query


def test_run_many_does_not_depend_on_chunking():
    searcher = discrete.make("random")
    benchmark = protocol.TabularBenchmark(
        reward=jnp.arange(nb201.NUM_ARCHS, dtype=jnp.float32) % 97,
        cost=jnp.full((nb201.NUM_ARCHS,), 100.0),
        valid=jnp.arange(nb201.NUM_ARCHS, dtype=jnp.float32) % 89,
        test=jnp.arange(nb201.NUM_ARCHS, dtype=jnp.float32) % 83,
        params=jnp.ones((nb201.NUM_ARCHS,)),
    )
    whole = protocol.run_many(searcher, benchmark, 5, seed=3, budget_seconds=1000.0, chunk_size=5, grid_points=11)
    pieces = protocol.run_many(searcher, benchmark, 5, seed=3, budget_seconds=1000.0, chunk_size=2, grid_points=11)
    np.testing.assert_array_equal(whole.best_code, pieces.best_code)
    np.testing.assert_array_equal(whole.trajectory, pieces.trajectory)
    np.testing.assert_array_equal(whole.num_queries, 10)  # 10 queries of 100 s fit in 1000 s
    # the trajectory ends at the reported answer (it need not rise: it follows the reward)
    assert np.all(np.isnan(whole.trajectory[:, 0]))
    np.testing.assert_array_equal(whole.trajectory[:, -1], whole.best_test)
    summary = protocol.summarize(whole)
    assert summary["runs"] == 5 and summary["test_mean"] == pytest.approx(float(np.mean(whole.best_test)))


# ------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------

needs_table = pytest.mark.skipif(not REAL_TABLE.is_file(), reason=f"NAS-Bench-201 table absent at {REAL_TABLE}")


@needs_table
def test_cli_evolve_prints_one_json_line_and_writes_results(capsys, tmp_path):
    out = tmp_path / "rs"
    code = main(
        ["evolve", "--table", str(REAL_TABLE), "--algo", "random", "--runs", "3", "--seed", "1", "--json", "--out", str(out)]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for field in ("algo", "runs", "test_mean", "test_std", "valid_mean", "seconds"):
        assert field in result
    assert result["algo"] == "random" and result["runs"] == 3
    assert 85.0 < result["test_mean"] <= 94.38  # the space's best is 94.37
    written = json.loads((out / "result.json").read_text())
    assert written["test_mean"] == result["test_mean"]
    assert len(written["per_run"]) == 3
    run0 = written["per_run"][0]
    assert nb201.format_arch(nb201.parse(run0["arch"])) == run0["arch"]
    assert 90 <= run0["queries"] <= 140 and run0["elapsed_seconds"] <= 12000.0
    trajectory = written["trajectory"]
    assert trajectory["seconds"][-1] == 12000.0
    assert trajectory["test_mean"][-1] == pytest.approx(result["test_mean"], abs=1e-3)


def test_cli_bad_table_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "broken.csv"
    bad.write_text("index,arch\n0,|none~0|\n")
    for table in (tmp_path / "missing.csv", bad):
        completed = subprocess.run(
            [sys.executable, "-c", "import sys; from jnas.cli import main; sys.exit(main())", "evolve", "--table", str(table)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert completed.returncode == 2, completed.stderr
        assert completed.stdout == ""
        lines = completed.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("jnas: error: ") and str(table) in lines[0]


def test_cli_bad_algo_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evolve", "--algo", "bayesopt"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "rea" in err


@needs_table
def test_cli_refuses_a_budget_below_one_query(capsys):
    assert main(["evolve", "--table", str(REAL_TABLE), "--budget-seconds", "100", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "dearest single query" in captured.err
