"""One proxy over all 15,625 NAS-Bench-201 cells with ``jnas score``: the whole-space figures.

Runs the CLI as a child process (so its wall time includes start-up and compilation, as a
user sees it) and writes one JSON with what the CLI prints (``--json``: correlations,
seconds, compile seconds, networks scored) plus the wall clock, the child's peak RSS, the
load average before the run, the machine, the date and the command; then the scatter of
the scores against CIFAR-10 test accuracy (``plot_scores.py``). The per-cell CSV goes to a
temporary directory unless ``--csv`` names one (it is a generated table: not committed).

    python experiments/zero_cost/score_all.py --proxy snip --dataset fashion_mnist \\
        --data-dir /usr/share/datasets/fashion-mnist \\
        --out experiments/zero_cost/results_snip_all_pruned_cpu.json --png experiments/zero_cost/snip_all_cpu.png
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from jnas.bench import machine_description  # noqa: E402
from jnas.benchmarks import nb201 as bench  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxy", required=True, help="one proxy (jnas score --proxy)")
    parser.add_argument("--dataset", default="gaussian")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=25)
    parser.add_argument("--archs", default="all", help="'all' or N (N for a quick check of this script)")
    parser.add_argument("--no-prune", action="store_true")
    parser.add_argument("--nb201-table", default=str(bench.default_path()))
    parser.add_argument("--csv", default=None, help="keep the per-cell CSV here (default: a temporary file)")
    parser.add_argument("--out", required=True, help="JSON to write")
    parser.add_argument("--png", default=None, help="scatter of the scores against test accuracy")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        csv_path = args.csv or os.path.join(tmp, f"{args.proxy}_all.csv")
        cmd = ["jnas", "score", "--space", "nb201", "--proxy", args.proxy, "--archs", args.archs,
               "--batch-size", str(args.batch_size), "--chunk", str(args.chunk), "--dataset", args.dataset]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        if args.no_prune:
            cmd += ["--no-prune"]
        cmd += ["--out", csv_path, "--overwrite", "--nb201-table", args.nb201_table, "--json", "--no-progress"]
        load_before = [round(x, 2) for x in os.getloadavg()]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode:
            sys.exit(f"jnas score failed ({done.returncode}):\n{done.stderr[-4000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        shown = [shlex.quote(c) for c in cmd]
        shown[shown.index("--out") + 1] = f"{args.proxy}_all.csv"
        shown[shown.index("--nb201-table") + 1] = shlex.quote(os.path.relpath(args.nb201_table))
        result = {
            **figures,
            "out": f"{args.proxy}_all.csv (not committed)",
            "machine": machine_description(),
            "date": datetime.date.today().isoformat(),
            "wall_clock_s": round(wall, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6, 2),
            "load_before": load_before,
            "command": " ".join(shown),
            "script": "python experiments/zero_cost/score_all.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        }
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: result[k] for k in ("seconds", "wall_clock_s", "peak_rss_gb")}
                         | {"proxies": result.get("proxies")}))
        if args.png:
            subprocess.run([sys.executable, str(ROOT / "experiments/zero_cost/plot_scores.py"), csv_path,
                            args.proxy, args.png], check=True)


if __name__ == "__main__":
    main()
