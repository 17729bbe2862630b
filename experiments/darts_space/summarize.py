"""Summary of the DARTS-space experiment: per search, the collapse indicators; per derived
cell, its from-scratch accuracy. Writes summary.json and two plots into the results
folder and prints a Markdown table (for README.md).

    python experiments/darts_space/summarize.py [experiments/darts_space/results]

Reads ``search-<space>-<method>/result.json`` (``jnas search``) and
``train-<space>-<method>/result.json`` (``jnas train``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

LABELS = {"darts": "DARTS (1st order)", "pcdarts": "PC-DARTS", "beta-darts": "β-DARTS"}
COLORS = {"darts": "tab:red", "pcdarts": "tab:blue", "beta-darts": "tab:green"}
METHOD_ORDER = ("darts", "pcdarts", "beta-darts")
DEFAULT_ARCH_LR = {"darts": 3e-4, "pcdarts": 6e-4, "beta-darts": 3e-4}


def label(run: dict) -> str:
    """Method name, plus the α learning rate where it is not the method's published one."""
    text = LABELS[run["method"]]
    if abs(run["arch_lr"] - DEFAULT_ARCH_LR[run["method"]]) > 1e-12:
        text += f", α lr {run['arch_lr']:g}"
    return text


def parameter_free_ops(genotype: str) -> int:
    """Edges of the normal cell whose chosen op has no parameters (skip, pools, none)."""
    normal = genotype.split("normal_concat")[0]
    return sum(normal.count(f"'{op}'") for op in ("skip_connect", "max_pool_3x3", "avg_pool_3x3", "none"))


def load_runs(root: Path) -> list[dict]:
    runs = []
    for search_dir in sorted(root.glob("search-*")):
        path = search_dir / "result.json"
        if not path.exists():
            continue
        search = json.loads(path.read_text())
        name = search_dir.name[len("search-"):]
        train_path = root / f"train-{name}" / "result.json"
        train = json.loads(train_path.read_text()) if train_path.exists() else None
        history = search["history"]
        method, space = search["method"], search["config"]["space"]
        arch_lr = search["method_options"]["arch_lr"]
        pf = [float(np.mean(h["param_free_weight"][0])) for h in history]  # normal cell, mean over edges
        runs.append({
            "name": name,
            "space": space,
            "method": method,
            "arch_lr": arch_lr,
            "search": {
                "genotype": search["genotype"],
                "ops": search["ops"],
                "epochs": len(history),
                "steps": int(sum(h["steps"] for h in history)),
                "seconds": search["seconds"],
                "final_val_acc": history[-1]["val_acc"],
                "normal_param_free_weight": pf,
                "skip_count": [h["skip_count"] for h in history],
                "hessian_eigenvalue": [(h["epoch"], h["hessian_eigenvalue"]) for h in history if "hessian_eigenvalue" in h],
                "normal_param_free_edges": parameter_free_ops(search["genotype"]),
                "config": search["config"],
            },
            "train": None if train is None else {
                "test_acc": train["test_acc"],
                "params": train["params"],
                "epochs": len(train["history"]),
                "seconds": train["seconds"],
                "test_acc_per_epoch": [h["test_acc"] for h in train["history"]],
                "train_images": train["train_images"],
                "test_images": train["test_images"],
            },
        })
    runs.sort(key=lambda r: (r["space"], r["arch_lr"] / DEFAULT_ARCH_LR[r["method"]], METHOD_ORDER.index(r["method"])))
    return runs


def plot(runs: list[dict], root: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    spaces = sorted({r["space"] for r in runs})
    fig, axes = plt.subplots(len(spaces), 3, figsize=(13, 3.6 * len(spaces)), squeeze=False)
    for row, space in enumerate(spaces):
        ax_pf, ax_skip, ax_eig = axes[row]
        for r in (r for r in runs if r["space"] == space):
            s, m = r["search"], r["method"]
            epochs = np.arange(1, s["epochs"] + 1)
            ls = "-" if label(r) == LABELS[m] else "--"
            ax_pf.plot(epochs, s["normal_param_free_weight"], color=COLORS[m], ls=ls, label=label(r))
            ax_skip.plot(epochs, s["skip_count"], color=COLORS[m], ls=ls, label=label(r), marker="o", ms=3)
            if s["hessian_eigenvalue"]:
                e, v = zip(*s["hessian_eigenvalue"])
                ax_eig.plot(np.array(e) + 1, v, color=COLORS[m], ls=ls, label=label(r), marker="o")
        ax_pf.set(title=f"{space}: parameter-free weight (normal cell)", xlabel="epoch", ylabel="mean softmax weight")
        ax_skip.set(title=f"{space}: skip_connect in the derived normal cell", xlabel="epoch", ylabel="edges (of 8)")
        ax_pf.axhline(2 / 3 if space == "darts-s3" else 0.5, color="grey", lw=0.8, ls=":")  # uniform α
        ax_eig.set(title=f"{space}: dominant eigenvalue of ∇²α L_val", xlabel="epoch")
        ax_pf.legend(fontsize=8)
    fig.tight_layout()
    path = root / "collapse.png"
    fig.savefig(path, dpi=110)
    written.append(path.name)

    trained = [r for r in runs if r["train"]]
    if trained:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in trained:
            acc = r["train"]["test_acc_per_epoch"]
            ax.plot(np.arange(1, len(acc) + 1), np.array(acc) * 100, color=COLORS[r["method"]],
                    ls="-" if label(r) == LABELS[r["method"]] else "--", label=f"{r['space']} {label(r)}")
        ax.set(title="From-scratch training of the derived cells", xlabel="epoch", ylabel="test accuracy (%)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = root / "training.png"
        fig.savefig(path, dpi=110)
        written.append(path.name)
    plt.close("all")
    return written


def table(runs: list[dict]) -> str:
    lines = ["| space | method | skip_connect in normal cell (final) | param-free edges (normal, of 8) | "
             "param-free weight, epoch 1 → last | Hessian eigenvalue, first → last | test acc (from scratch) | params |",
             "| --- | --- | ---: | ---: | --- | --- | ---: | ---: |"]
    for r in runs:
        s, t = r["search"], r["train"]
        pf = s["normal_param_free_weight"]
        eig = s["hessian_eigenvalue"]
        eig_text = f"{eig[0][1]:.3g} → {eig[-1][1]:.3g}" if eig else "–"
        acc = f"{100 * t['test_acc']:.2f} %" if t else "not trained"
        params = f"{t['params']:,}" if t else "–"
        lines.append(f"| {r['space']} | {label(r)} | {s['skip_count'][-1]} | {s['normal_param_free_edges']} | "
                     f"{pf[0]:.3f} → {pf[-1]:.3f} | {eig_text} | {acc} | {params} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent / "results"
    runs = load_runs(root)
    if not runs:
        print(f"no finished searches under {root}", file=sys.stderr)
        return 1
    summary = {"runs": runs, "plots": plot(runs, root)}
    (root / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
