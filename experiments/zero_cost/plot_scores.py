"""Scatter of a ``jnas score`` CSV's proxy (mean over inits) against NB201 CIFAR-10 test accuracy.

    python experiments/zero_cost/plot_scores.py scores.csv synflow experiments/zero_cost/synflow_all.png
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jnas.benchmarks import nb201 as bench  # noqa: E402


def spans_decades(score: np.ndarray) -> bool:
    """Whether a proxy's scores want a log axis: nearly all positive and spread over decades
    (snip, grad_norm, fisher); on a linear axis they are one column."""
    finite = np.isfinite(score)
    positive = score[finite & (score > 0)]
    return len(positive) > 0.9 * finite.sum() and positive.max() > 100 * np.median(positive)


def main() -> None:
    path, proxy, out = sys.argv[1:4]
    table = bench.load_table(bench.default_path())
    rows = list(csv.DictReader(open(path)))
    # NaN (jacob_cov where no path reaches the input) ranks lowest, as in `jnas score --json`
    score = np.nan_to_num(np.array([float(r[f"{proxy}_mean"]) for r in rows]), nan=-np.inf)
    acc = np.array([table.lookup(r["arch"])["c10_test_acc_200"] for r in rows])
    from scipy import stats

    rho = stats.spearmanr(score, acc).statistic
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = np.isfinite(score)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.scatter(score[finite], acc[finite], s=1, alpha=0.3)
    wide = spans_decades(score)
    if wide:
        ax.set_xscale("log")
    ax.set_xlabel(f"{proxy}" + (" (natural log)" if proxy == "synflow" else " (log axis)" if wide else ""))
    ax.set_ylabel("NB201 CIFAR-10 test accuracy, 200 epochs (%)")
    hidden = (~finite).sum() + (int((score[finite] <= 0).sum()) if wide else 0)
    what = "-inf, NaN, <= 0" if wide else "-inf or NaN"
    ax.set_title(f"{proxy}, {len(rows)} cells: Spearman {rho:.3f} ({hidden} not drawn: {what})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(out, rho)


if __name__ == "__main__":
    main()
