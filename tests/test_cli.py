"""End-to-end CLI tests: tiny searches, the tfds path, real Fashion-MNIST, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from jnas.benchmarks import nb201 as bench
from jnas.cli import main
from jnas.spaces import nb201 as space

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
TINY = ["--channels", "2", "--cells", "1", "--batch-size", "8", "--no-progress"]


def run_cli(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_search_digits_writes_result(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["search", "--steps", "3", "--limit", "64", "--out", str(out), *TINY]
    table = bench.default_path()
    if table is not None:
        argv += ["--nb201-table", str(table)]
    code, stdout, _ = run_cli(argv, capsys)
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    encoding = space.parse(result["genotype"])  # a valid official arch string
    assert result["genotype"] in stdout
    assert len(result["arch_weights"]) == 6 and all(abs(sum(row) - 1) < 1e-5 for row in result["arch_weights"])
    assert [int(max(range(5), key=row.__getitem__)) for row in result["arch_weights"]] == encoding.tolist()
    assert result["config"]["total_steps"] == 3
    assert result["history"] and {"train_loss", "train_acc", "val_loss", "val_acc", "arch_weights"} <= set(result["history"][0])
    assert result["seconds"] > 0
    if table is not None:
        assert result["nb201"]["index"] == bench.load_table(table).index_of(result["genotype"])
        assert "nb201" in result["history"][-1]


def test_search_refuses_to_overwrite_a_finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text("{}")
    code, _, err = run_cli(["search", "--steps", "1", "--out", str(out), *TINY], capsys)
    assert_usage_error(code, err, "already holds a finished run")
    assert (out / "result.json").read_text() == "{}"


def test_search_on_tfds_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from jnas.search.runner import SearchConfig, run_search

    with tfds.testing.mock_data(num_examples=32, policy=tfds.testing.MockPolicy.USE_CODE):
        result = run_search(
            SearchConfig(dataset="fashion_mnist", epochs=1, batch_size=8, channels=2, cells=1), progress=False
        )
    assert result["dataset"]["image_shape"] == [28, 28, 1]
    assert len(result["history"]) == 1 and result["history"][0]["steps"] == 2
    space.parse(result["genotype"])


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_short_real_search_on_fashion_mnist_files(tmp_path, capsys):
    out = tmp_path / "fm"
    code, stdout, _ = run_cli(
        ["search", "--dataset", "fashion_mnist", "--data-dir", str(FASHION_DIR), "--limit", "256",
         "--epochs", "2", "--out", str(out), "--channels", "4", "--cells", "1", "--batch-size", "32", "--no-progress"],
        capsys,
    )
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["dataset"]["image_shape"] == [28, 28, 1]
    assert [h["epoch"] for h in result["history"]] == [0, 1]
    assert all(h["steps"] == 4 for h in result["history"])
    # it learns something on real data: training accuracy above chance (10 classes)
    assert result["history"][-1]["train_acc"] > 0.15
    assert "derived cell:" in stdout


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["search", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["search", "--method", "enas"], "unknown search method 'enas'"),
        (["search", "--space", "nb301"], "unknown search space 'nb301'"),
        (["search", "--batch-size", "0"], "--batch-size"),
        (["search", "--channels", "-3"], "--channels"),
        (["search", "--cells", "100000"], "absurdly large"),
        (["search", "--epochs", "ten"], "--epochs"),
        (["search", "--order", "3"], "--order must be 1 or 2"),
        (["search", "--dataset", "fashion_mnist", "--data-dir", "/nonexistent/jnas-data"], "/nonexistent/jnas-data"),
        (["bench", "step", "--order", "3"], "--order"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(argv, fragment, tmp_path, capsys):
    code, _, err = run_cli([*argv, *(["--out", str(tmp_path / "o")] if argv[0] == "search" else [])], capsys)
    assert_usage_error(code, err, fragment)
    assert not (tmp_path / "o" / "result.json").exists()


def test_bad_table_gets_one_line(tmp_path, capsys):
    table = tmp_path / "table.csv"
    table.write_text("index,arch\n0,|none~0|+|none~0|none~1|+|none~0|none~1|none~2|\n")
    code, _, err = run_cli(["search", "--nb201-table", str(table), "--out", str(tmp_path / "o"), *TINY], capsys)
    assert_usage_error(code, err, "lacks column")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; permissions cannot make a directory unwritable")
def test_unwritable_output_directory(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = run_cli(["search", "--out", str(locked / "run"), *TINY], capsys)
    assert_usage_error(code, err, "not writable")


def test_output_directory_on_a_read_only_filesystem(capsys):
    """Works as root too: /proc refuses new directories whatever the user."""
    code, _, err = run_cli(["search", "--out", "/proc/jnas-test-run", *TINY], capsys)
    assert_usage_error(code, err, "not writable")


def test_output_path_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(["search", "--out", str(blocker / "run"), *TINY], capsys)
    assert_usage_error(code, err, "not writable")


def test_bench_step_prints_one_json_line(capsys):
    code, stdout, _ = run_cli(
        ["bench", "step", "--batch-size", "2", "--channels", "2", "--cells", "1", "--image-size", "8",
         "--steps", "1", "--warmup", "0", "--json"],
        capsys,
    )
    assert code == 0
    record = json.loads(stdout.strip().splitlines()[-1])
    for key in ("median_step_s", "compile_s", "peak_rss_mb", "images_per_s"):
        assert record[key] > 0
    assert record["images_per_s"] == pytest.approx(4 / record["median_step_s"])
    assert record["compilation_cache_dir"] == (jax.config.jax_compilation_cache_dir or None)


def test_compare_script_compiles_cold(monkeypatch):
    """experiments/bench_step/compare.py runs jnas without JAX's persistent cache, whatever the caller set."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments" / "bench_step"))
    try:
        import compare
    finally:
        sys.path.pop(0)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/tmp/somewhere")
    monkeypatch.setenv("JNAS_TEST_MARKER", "kept")
    env = compare.cold_compile_env()
    assert "JAX_COMPILATION_CACHE_DIR" not in env and env["JNAS_TEST_MARKER"] == "kept"


def test_entry_point_bad_input_in_a_real_process(tmp_path):
    """The installed console script: one stderr line, exit 2, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "jnas.cli", "search", "--dataset", "nope", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "unknown dataset 'nope'" in proc.stderr
