"""The bad-input table: every row gets one line on stderr, exit code 2, and nothing of an
earlier run is overwritten. Rows already tested in test_cli.py are listed in the README
table under their own test names; the rest are here. None of these compiles a network."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from jnas import checkpoint
from jnas.search.runner import SearchConfig

from test_cli import TINY, assert_usage_error, run_cli
from test_resume import write_synthetic_table

TINY_CONFIG = dict(batch_size=8, channels=2, cells=1)


@pytest.fixture(scope="module")
def good_table(tmp_path_factory):
    return write_synthetic_table(tmp_path_factory.mktemp("table") / "table.csv")


def _edit_table(good: Path, out: Path, edit) -> Path:
    lines = good.read_text().splitlines()
    out.write_text("\n".join(edit(lines)) + "\n")
    return out


def _row(lines, n, column, value):
    header = lines[0].split(",")
    cells = lines[n].split(",")
    cells[header.index(column)] = value
    lines[n] = ",".join(cells)
    return lines


# -------------------------------------------------------------- arch strings in a table


@pytest.mark.parametrize("arch, fragment", [
    ("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2", "must be enclosed"),  # truncated
    ("|nor_conv_3x3~0|+|none~0|none~1|", "arch"),  # truncated after two nodes
    ("|conv_9x9~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|", "conv_9x9"),  # unknown op
    ("nonsense", "nonsense"),
])
def test_malformed_arch_string_in_table(good_table, tmp_path, capsys, arch, fragment):
    table = _edit_table(good_table, tmp_path / "t.csv", lambda lines: _row(lines, 5, "arch", arch))
    code, _, err = run_cli(["evolve", "--table", str(table), "--runs", "2", "--out", str(tmp_path / "o")], capsys)
    assert_usage_error(code, err, "t.csv:6", fragment)
    assert not (tmp_path / "o").exists()


def test_non_numeric_value_in_table(good_table, tmp_path, capsys):
    table = _edit_table(good_table, tmp_path / "t.csv", lambda lines: _row(lines, 9, "c10_test_acc_200", "n/a"))
    code, _, err = run_cli(["search", "--nb201-table", str(table), "--out", str(tmp_path / "o"), *TINY], capsys)
    assert_usage_error(code, err, "t.csv:10", "non-numeric value 'n/a'")


def test_table_missing_a_column(good_table, tmp_path, capsys):
    def drop(lines):
        return [",".join(c for i, c in enumerate(line.split(",")) if i != 5) for line in lines]

    table = _edit_table(good_table, tmp_path / "t.csv", drop)
    code, _, err = run_cli(["evolve", "--table", str(table), "--runs", "2"], capsys)
    assert_usage_error(code, err, "lacks column(s): cifar10_train_time_200_s")


def test_truncated_table(good_table, tmp_path, capsys):
    table = _edit_table(good_table, tmp_path / "t.csv", lambda lines: lines[:100])
    code, _, err = run_cli(["evolve", "--table", str(table), "--runs", "2"], capsys)
    assert_usage_error(code, err, "has 99 rows, expected 15625")


# -------------------------------------------------------------- names and sizes


@pytest.mark.parametrize("argv, fragment", [
    (["evolve", "--algo", "bayes"], "invalid choice: 'bayes'"),
    (["evolve", "--benchmark", "nb301"], "invalid choice: 'nb301'"),
    (["evolve", "--runs", "0"], "--runs"),
    (["bench", "step", "--order", "2", "--hvp", "fd"], "invalid choice: 'fd'"),
    (["evolve", "--runs", "1000000000"], "absurdly large"),
    (["evolve", "--budget-seconds", "-5"], "--budget-seconds"),
    (["evolve", "--budget-seconds", "inf"], "--budget-seconds"),
    (["evolve", "--supernet", "--queries", "0"], "--queries"),
    (["search", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["search", "--keep", "0"], "--keep"),
    (["search", "--keep", "99999"], "absurdly large"),
    (["search", "--steps", "100000000"], "absurdly large"),
    (["search", "--on-nonfinite", "ignore"], "invalid choice: 'ignore'"),
    (["search", "--seed", "-1"], "--seed"),
    (["evolve", "--supernet", "--resume", "x"], "drop --out"),
    (["evolve", "--supernet", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["evolve", "--checkpoint-every", "5"], "--checkpoint-every only apply with --supernet"),
])
def test_bad_names_and_sizes(argv, fragment, tmp_path, capsys):
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "o")], capsys)
    assert_usage_error(code, err, fragment)
    assert not (tmp_path / "o").exists()


# -------------------------------------------------------------- data directories and files


def _idx(array, magic=None) -> bytes:
    array = np.asarray(array, np.uint8)
    magic = 0x0800 + array.ndim if magic is None else magic
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


def _fashion(root: Path, images: bytes | None = None, labels: bytes | None = None) -> Path:
    root.mkdir(exist_ok=True)
    (root / "train-images-idx3-ubyte").write_bytes(images if images is not None else _idx(np.zeros((32, 28, 28))))
    (root / "train-labels-idx1-ubyte").write_bytes(labels if labels is not None else _idx(np.zeros(32)))
    return root


def _search_data(tmp_path, capsys, dataset, data_dir):
    return run_cli(["search", "--dataset", dataset, "--data-dir", str(data_dir), "--out", str(tmp_path / "o"),
                    *TINY], capsys)


def test_data_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = _search_data(tmp_path, capsys, "fashion_mnist", tmp_path / "file")
    assert_usage_error(code, err, str(tmp_path / "file"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_unreadable_data_dir(tmp_path, capsys):
    root = _fashion(tmp_path / "fm")
    root.chmod(0o000)
    try:
        code, _, err = _search_data(tmp_path, capsys, "fashion_mnist", root)
    finally:
        root.chmod(0o755)
    assert_usage_error(code, err, "fm")


def test_directory_in_place_of_a_data_file(tmp_path, capsys):
    """Works as root too: a directory where the image file should be is no data file."""
    root = tmp_path / "fm"
    root.mkdir()
    (root / "train-images-idx3-ubyte").mkdir()
    (root / "train-labels-idx1-ubyte").write_bytes(_idx(np.zeros(32)))
    code, _, err = _search_data(tmp_path, capsys, "fashion_mnist", root)
    assert_usage_error(code, err, "train-images-idx3-ubyte[.gz]: missing file")


def test_idx_wrong_magic(tmp_path, capsys):
    root = _fashion(tmp_path / "fm", images=_idx(np.zeros((32, 28, 28)), magic=2049))
    code, _, err = _search_data(tmp_path, capsys, "fashion_mnist", root)
    assert_usage_error(code, err, "wrong magic number 2049")


def test_idx_truncated_body(tmp_path, capsys):
    root = _fashion(tmp_path / "fm", images=_idx(np.zeros((32, 28, 28)))[:-100])
    code, _, err = _search_data(tmp_path, capsys, "fashion_mnist", root)
    assert_usage_error(code, err, "truncated")


def test_idx_truncated_gzip(tmp_path, capsys):
    root = tmp_path / "fm"
    root.mkdir()
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros((32, 28, 28))))[:-20])
    (root / "train-labels-idx1-ubyte").write_bytes(_idx(np.zeros(32)))
    code, _, err = _search_data(tmp_path, capsys, "fashion_mnist", root)
    assert_usage_error(code, err, "train-images-idx3-ubyte.gz")


def _cifar10(root: Path, first: bytes) -> Path:
    root.mkdir()
    record = np.zeros((4, 3073), np.uint8).tobytes()
    (root / "data_batch_1.bin").write_bytes(first)
    for i in range(2, 6):
        (root / f"data_batch_{i}.bin").write_bytes(record)
    return root


def test_cifar_truncated_body(tmp_path, capsys):
    root = _cifar10(tmp_path / "c10", np.zeros((4, 3073), np.uint8).tobytes()[:-7])
    code, _, err = _search_data(tmp_path, capsys, "cifar10", root)
    assert_usage_error(code, err, "data_batch_1.bin: truncated")


def test_cifar_bad_label_byte(tmp_path, capsys):
    """CIFAR's binary format has no magic number; a label byte out of range is its wrong header."""
    records = np.zeros((4, 3073), np.uint8)
    records[2, 0] = 200
    root = _cifar10(tmp_path / "c10", records.tobytes())
    code, _, err = _search_data(tmp_path, capsys, "cifar10", root)
    assert_usage_error(code, err, "data_batch_1.bin")


# -------------------------------------------------------------- output directories


def test_evolve_refuses_to_overwrite_a_finished_run(good_table, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text('{"finished": true}')
    code, _, err = run_cli(["evolve", "--table", str(good_table), "--runs", "2", "--budget-seconds", "2000",
                            "--out", str(out)], capsys)
    assert_usage_error(code, err, "already holds a finished run")
    assert (out / "result.json").read_text() == '{"finished": true}'


def test_evolve_unwritable_output_directory(good_table, capsys):
    code, _, err = run_cli(["evolve", "--table", str(good_table), "--runs", "2", "--budget-seconds", "2000",
                            "--out", "/proc/jnas-test-evolve"], capsys)
    assert_usage_error(code, err, "not writable")


def test_search_refuses_to_restart_over_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints" / "4").mkdir(parents=True)
    code, _, err = run_cli(["search", "--out", str(out), *TINY], capsys)
    assert_usage_error(code, err, "holds checkpoints of an unfinished run", "--resume")
    assert (out / "checkpoints" / "4").is_dir()


@pytest.mark.parametrize("case", ["no-checkpoints", "finished", "other-out"])
def test_search_resume_of_nothing_to_resume(tmp_path, capsys, case):
    run = tmp_path / "run"
    run.mkdir()
    extra = []
    if case == "finished":
        (run / "checkpoints").mkdir()
        (run / "result.json").write_text("{}")
    if case == "other-out":
        (run / "checkpoints").mkdir()
        extra = ["--out", str(tmp_path / "elsewhere")]
    code, _, err = run_cli(["search", "--resume", str(run), *extra, *TINY], capsys)
    fragment = {"no-checkpoints": "no checkpoints/", "finished": "has finished", "other-out": "drop --out"}[case]
    assert_usage_error(code, err, fragment)


# -------------------------------------------------------------- checkpoints


def _checkpoint_of(out: Path, config: SearchConfig, damage: bool = False) -> None:
    """A checkpoint as `jnas search` writes it, of ``config`` (its arrays do not matter:
    the config is compared, or the damage found, before any array is read)."""
    with checkpoint.Checkpoints(out / "checkpoints", "search", dataclasses.asdict(config)) as store:
        for step in (1, 2):
            store.save(step, {"x": np.zeros(3, np.float32)}, {"done": step})
    if damage:
        for step in (1, 2):
            meta = out / "checkpoints" / str(step) / "meta" / "metadata"
            meta.write_text(meta.read_text()[:-10])


def test_resume_with_a_different_config_names_the_keys(tmp_path, capsys):
    out = tmp_path / "run"
    _checkpoint_of(out, SearchConfig(seed=0, limit=64, **TINY_CONFIG))
    code, _, err = run_cli(["search", "--resume", str(out), "--seed", "1", "--limit", "128", *TINY], capsys)
    assert_usage_error(code, err, "different config", "limit (checkpoint 64, now 128)", "seed (checkpoint 0, now 1)")
    assert checkpoint.Checkpoints(out / "checkpoints", "search", {}).steps() == [1, 2]  # untouched


def test_resume_from_corrupt_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    _checkpoint_of(out, SearchConfig(limit=64, **TINY_CONFIG), damage=True)
    code, _, err = run_cli(["search", "--resume", str(out), "--limit", "64", *TINY], capsys)
    assert_usage_error(code, err, "no intact checkpoint", "2 (meta/metadata is truncated")
    assert not (out / "result.json").exists()


def test_evolve_resume_with_a_different_config(good_table, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["evolve", "--table", str(good_table), "--runs", "4", "--chunk-runs", "2", "--budget-seconds", "2000",
            "--algo", "random"]
    code, _, err = run_cli([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    (out / "result.json").unlink()  # as if killed before the end
    code, _, err = run_cli([*argv, "--resume", str(out), "--seed", "5"], capsys)
    assert_usage_error(code, err, "different config", "seed (checkpoint 0, now 5)")
    code, _, err = run_cli([*argv[:-2], "--algo", "rea", "--resume", str(out)], capsys)
    assert_usage_error(code, err, "algo (checkpoint 'random', now 'rea')")
    assert json.loads((out / "checkpoints" / "2" / "meta" / "metadata").read_text())["meta"]["chunks_done"] == 2


def test_evolve_supernet_resume_with_a_different_config(good_table, tmp_path, capsys):
    """Refused naming the keys, before any network is built (the config is checked first)."""
    from jnas.benchmarks.nb201 import load_table
    from jnas.search.oneshot_runner import OneShotConfig, checkpoint_config

    out = tmp_path / "run"
    argv = ["evolve", "--supernet", "--table", str(good_table), "--channels", "2", "--cells", "1",
            "--batch-size", "8", "--limit", "64", "--train-steps", "4", "--runs", "2", "--no-progress"]
    config = OneShotConfig(channels=2, cells=1, batch_size=8, limit=64, train_steps=4, runs=2)
    with checkpoint.Checkpoints(out / "checkpoints", "evolve", checkpoint_config(config, load_table(good_table))) \
            as store:
        store.save(2, {"x": np.zeros(3, np.float32)}, {"phase": "train"})
    code, _, err = run_cli([*argv, "--resume", str(out), "--seed", "5", "--chunk-runs", "1"], capsys)
    assert_usage_error(code, err, "different config", "seed (checkpoint 0, now 5)", "chunk_runs (checkpoint None, now 1)")
    # a fresh start over those checkpoints is refused too; they are untouched
    code, _, err = run_cli([*argv, "--out", str(out)], capsys)
    assert_usage_error(code, err, "holds checkpoints of an unfinished run", "--resume")
    # a tabular run's checkpoints are not a supernet run's
    tabular = tmp_path / "tabular"
    with checkpoint.Checkpoints(tabular / "checkpoints", "evolve", {"mode": "tabular", "algo": "rea"}) as store:
        store.save(1, {"x": np.zeros(3, np.float32)}, {"chunks_done": 1})
    code, _, err = run_cli([*argv, "--resume", str(tabular)], capsys)
    assert_usage_error(code, err, "different config", "mode (checkpoint 'tabular', now 'supernet')")
    assert checkpoint.Checkpoints(out / "checkpoints", "evolve", {}).steps() == [2]
    assert not (out / "result.json").exists() and not (tabular / "result.json").exists()
