"""Zero-cost proxies on a random sample of NAS-Bench-201: how many inits, and which data.

Two experiments on the same random sample of cells (``--blocks`` random blocks of 25
from ``balanced_order()``, so every edge carries every op equally often and the
capacity stays ``chunk / 5``), scored as stand-alone networks (C=16, N=5, 3x32x32):

1. **Inits.** ``--inits`` (64) random initialisations of every cell for two proxies
   (synflow and nwot by default). Spearman of the mean score over ``k`` inits against
   ``c10_test_acc_200``, for k = 1, 8, 64: for k < 64 over the 64/k disjoint groups
   of inits (mean and spread), so the plot shows what averaging buys.
2. **Data.** Every data-dependent proxy with one init on a batch of Fashion-MNIST
   (nearest-resized to 32x32, replicated to 3 channels: the only real images offline)
   and on a Gaussian batch; Spearman and Kendall against ``c10_test_acc_200``, beside
   the published CIFAR-10 values (Abdelfattah et al., ICLR 2021, Table 1 / zero-cost-nas).

    python experiments/zero_cost/inits_and_data.py --data-dir /usr/share/datasets/fashion-mnist

Writes ``results_inits_and_data.json`` and ``inits.png`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from jnas.bench import machine_description  # noqa: E402
from jnas.benchmarks import nb201 as bench  # noqa: E402
from jnas.cli.score import load_batch  # noqa: E402
from jnas.proxies import batched  # noqa: E402
from jnas.supernet.nb201 import SupernetConfig  # noqa: E402

DATA_PROXIES = ("snip", "grad_norm", "grasp", "fisher", "jacob_cov", "nwot")
# Spearman on NAS-Bench-201 CIFAR-10 (Abdelfattah et al. 2021, Table 1; NASWOT: Mellor et al. 2021).
PUBLISHED = {"synflow": 0.74, "jacob_cov": 0.731, "snip": 0.596, "grad_norm": 0.594, "grasp": 0.514,
             "fisher": 0.36, "nwot": 0.78}


def spearman(a, b) -> float:
    from scipy import stats

    ok = np.isfinite(a)
    return float(stats.spearmanr(a[ok], b[ok])[0])


def kendall(a, b) -> float:
    from scipy import stats

    ok = np.isfinite(a)
    return float(stats.kendalltau(a[ok], b[ok])[0])


def sample_codes(blocks: int, seed: int) -> np.ndarray:
    order = batched.balanced_order().reshape(-1, batched.BLOCK)
    pick = np.random.default_rng(seed).choice(len(order), size=blocks, replace=False)
    return order[np.sort(pick)].reshape(-1)


def inits_experiment(codes, acc, proxies, inits, config, images, labels, chunk) -> dict:
    out = {}
    for name in proxies:
        t = time.perf_counter()
        result = batched.score_archs(codes, [name], config, images=images, labels=labels, inits=inits, chunk=chunk)
        scores = result.scores[name]  # (n, inits)
        rows = {}
        for k in (1, 8, 64):
            if k > inits:
                continue
            groups = [scores[:, g * k:(g + 1) * k].mean(axis=1) for g in range(inits // k)]
            rhos = np.array([spearman(s, acc) for s in groups])
            rows[str(k)] = {"spearman_mean": float(rhos.mean()), "spearman_std": float(rhos.std()),
                            "groups": len(rhos), "spearman_groups": rhos.tolist()}
        out[name] = {"by_inits": rows, "seconds": time.perf_counter() - t, "compile_seconds": result.compile_seconds,
                     "init_chunk": result.init_chunk}
        print(json.dumps({name: {k: round(v["spearman_mean"], 4) for k, v in rows.items()}}), flush=True)
    return out


def data_experiment(codes, acc, batches, config, chunk) -> dict:
    out = {}
    for data_name, (images, labels) in batches.items():
        t = time.perf_counter()
        result = batched.score_archs(codes, list(DATA_PROXIES), config, images=images, labels=labels, chunk=chunk)
        out[data_name] = {
            "seconds": time.perf_counter() - t,
            "compile_seconds": result.compile_seconds,
            "proxies": {name: {"spearman": spearman(result.scores[name][:, 0], acc),
                               "kendall": kendall(result.scores[name][:, 0], acc),
                               "published_cifar10_spearman": PUBLISHED.get(name)} for name in DATA_PROXIES},
        }
        print(json.dumps({data_name: {n: round(v["spearman"], 3) for n, v in out[data_name]["proxies"].items()}}),
              flush=True)
    return out


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, res in record["inits"].items():
        ks = sorted(int(k) for k in res["by_inits"])
        mean = [res["by_inits"][str(k)]["spearman_mean"] for k in ks]
        std = [res["by_inits"][str(k)]["spearman_std"] for k in ks]
        ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="inits averaged per cell", ylabel="Spearman vs c10_test_acc_200",
           title=f"{record['n_archs']} random NB201 cells")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=12, help="random blocks of 25 cells (12: 300 cells)")
    p.add_argument("--inits", type=int, default=64)
    p.add_argument("--init-proxies", default="synflow,nwot")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chunk", type=int, default=25)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files; without it, tfds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-inits", action="store_true")
    p.add_argument("--skip-data", action="store_true")
    p.add_argument("--out", type=Path, default=HERE / "results_inits_and_data.json")
    args = p.parse_args()

    import jax

    config = SupernetConfig(channels=16, cells=5)
    table = bench.load_table(bench.default_path())
    codes = sample_codes(args.blocks, args.seed)
    acc = np.asarray(table["c10_test_acc_200"])[codes]
    gauss = load_batch("gaussian", None, args.batch_size, 32, 3, args.seed)
    record = {
        "machine": machine_description(), "backend": jax.default_backend(), "jax": jax.__version__,
        "n_archs": int(len(codes)), "batch_size": args.batch_size, "seed": args.seed,
        "command": "python experiments/zero_cost/inits_and_data.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
    }
    if not args.skip_inits:
        record["inits"] = inits_experiment(codes, acc, args.init_proxies.split(","), args.inits, config,
                                           *gauss, chunk=args.chunk)
        args.out.write_text(json.dumps(record, indent=1) + "\n")  # each part is kept as soon as it ends
        plot(record, args.out.with_name("inits.png"))
    if not args.skip_data:
        fmnist = load_batch("fashion_mnist", args.data_dir, args.batch_size, 32, 3, args.seed)
        record["data"] = data_experiment(codes, acc, {"fashion_mnist": fmnist, "gaussian": gauss}, config, args.chunk)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
