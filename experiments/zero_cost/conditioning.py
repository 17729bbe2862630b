"""How much a proxy's score moves under float32-sized changes of its input batch.

The batched scorer and the per-cell loop sum in different orders, so they agree only to
float32 rounding, amplified by the proxy itself. This script measures that
amplification: each cell is scored alone (chunk 1) on the batch and on copies whose
pixels are multiplied by ``1 + eps * N(0, 1)``, and the relative change of each score
is recorded. Where a 1e-7 perturbation already moves a score by 1e-3, a 1e-3 gap
between the loop and the batched run is rounding, not a leak between architectures.

Usage (from the repository root):

    python experiments/zero_cost/conditioning.py --proxies fisher,snip --cells 10,15,3 \
        --out experiments/zero_cost/results_conditioning.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jnas.bench import machine_description  # noqa: E402
from jnas.cli.common import write_json_atomic  # noqa: E402
from jnas.cli.score import load_batch  # noqa: E402
from jnas.proxies import batched  # noqa: E402
from jnas.spaces import nb201 as space  # noqa: E402
from jnas.supernet.nb201 import SupernetConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proxies", default="fisher,snip")
    p.add_argument("--cells", default="10,15,3", help="positions in the balanced order")
    p.add_argument("--eps", default="1e-7,1e-6", help="relative pixel perturbations")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    images, labels = load_batch(args.dataset, args.data_dir, args.batch_size, 32, 3, args.seed)
    codes = batched.balanced_order()[[int(c) for c in args.cells.split(",")]]
    config = SupernetConfig()
    rng = np.random.default_rng(args.seed + 1)
    rows = []
    for name in args.proxies.split(","):
        base = batched.score_archs(codes, [name], config, images=images, labels=labels, chunk=1,
                                   seed=args.seed).scores[name][:, 0]
        for eps in (float(e) for e in args.eps.split(",")):
            noisy = (images * (1 + eps * rng.standard_normal(images.shape))).astype(np.float32)
            moved = batched.score_archs(codes, [name], config, images=noisy, labels=labels, chunk=1,
                                        seed=args.seed).scores[name][:, 0]
            for code, b, m in zip(codes, base, moved):
                rows.append({"proxy": name, "eps": eps, "arch": space.format_arch(np.asarray(space.code_to_encoding(int(code)))),
                             "score": float(b), "relative_change": float(abs(m - b) / max(abs(b), 1e-12))})
                print(f"{name:10s} eps {eps:.0e}  {rows[-1]['relative_change']:.1e}  {rows[-1]['arch']}", flush=True)
    command = "python experiments/zero_cost/conditioning.py " + " ".join(sys.argv[1:])
    write_json_atomic(args.out, {"machine": machine_description(), "dataset": args.dataset,
                                 "batch_size": args.batch_size, "rows": rows, "command": command})


if __name__ == "__main__":
    main()
