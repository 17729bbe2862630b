"""``jnas score``: a tiny end-to-end run and one-line errors for bad input."""

from __future__ import annotations

import csv
import json

import pytest

from jnas.benchmarks import nb201 as bench
from jnas.spaces import nb201 as space
from test_cli import assert_usage_error, run_cli

TINY = ["--channels", "2", "--cells", "1", "--image-size", "8", "--batch-size", "4", "--no-progress"]


def test_score_writes_csv_and_json(tmp_path, capsys):
    table = bench.default_path()
    if table is None:
        pytest.skip("no NAS-Bench-201 table")
    out = tmp_path / "scores.csv"
    argv = ["score", "--proxy", "params,flops", "--archs", "30", "--inits", "2", "--chunk", "10", "--out", str(out),
            "--nb201-table", str(table), "--json", *TINY]
    code, stdout, _ = run_cli(argv, capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["n_archs"] == 30 and summary["archs_per_s"] > 0
    for name in ("params", "flops"):
        figures = summary["proxies"][name]
        assert set(figures) >= {"spearman", "kendall", "n_archs", "seconds", "archs_per_s"}
        assert -1 <= figures["spearman"] <= 1
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 30
    loaded = bench.load_table(table)
    for row in rows:
        assert int(row["index"]) == loaded.index_of(row["arch"])
        assert float(row["params_std"]) == 0.0  # a count does not depend on the init
    assert len({r["arch"] for r in rows}) == 30
    space.parse(rows[0]["arch"])


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--proxy", "synflow,bogus"], "unknown proxy 'bogus'"),
        (["--archs", "lots"], "--archs must be 'all' or a positive integer"),
        (["--archs", "0"], "--archs must lie in 1..15625"),
        (["--space", "darts"], "unknown space"),
        (["--dataset", "fashion_mnist", "--data-dir", "/nonexistent/dir", "--proxy", "snip"], "/nonexistent/dir"),
        (["--nb201-table", "/nonexistent/table.csv"], "table.csv"),
    ],
)
def test_score_bad_input_is_one_line(tmp_path, capsys, extra, fragment):
    argv = ["score", "--proxy", "params", "--archs", "5", "--out", str(tmp_path / "s.csv"), *TINY, *extra]
    code, _, err = run_cli(argv, capsys)
    assert_usage_error(code, err, fragment)
    assert not (tmp_path / "s.csv").exists()


def test_score_refuses_existing_output(tmp_path, capsys):
    out = tmp_path / "s.csv"
    out.write_text("earlier results\n")
    code, _, err = run_cli(["score", "--proxy", "params", "--archs", "5", "--out", str(out), *TINY], capsys)
    assert_usage_error(code, err, "--overwrite")
    assert out.read_text() == "earlier results\n"


def test_score_unreadable_table(tmp_path, capsys):
    bad = tmp_path / "table.csv"
    bad.write_text("index,arch\n0,nonsense\n")
    code, _, err = run_cli(["score", "--proxy", "params", "--archs", "5", "--out", str(tmp_path / "s.csv"),
                            "--nb201-table", str(bad), *TINY], capsys)
    assert_usage_error(code, err, "table.csv")
