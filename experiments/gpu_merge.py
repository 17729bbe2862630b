"""Files the JSON written by experiments/gpu_run.sh beside the scripts that made them.

    python experiments/gpu_merge.py DIR [DIR ...]

Each DIR holds the unpacked ``results.tgz`` of one GPU pass (``step1.json``,
``torch1.json``, ``kernel.json``, ``proxy_synflow.json``, ...); a later DIR overrides an
earlier one's files of the same name. Writes:

* experiments/results/bench_step_gpu.json   jnas vs PyTorch steps, vmapped forward
* experiments/results/kernel_gpu.json       the Pallas mixed-op kernel vs XLA
* experiments/zero_cost/results_<proxy>_all_gpu.json (every proxy_<proxy>.json), results_inits{,_nwot}_gpu.json
* experiments/scaling/results_gpu.json
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(dirs: list[Path]) -> dict[str, dict]:
    found = {}
    for d in dirs:
        for f in sorted(d.glob("*.json")):
            found[f.stem] = json.loads(f.read_text())
    return found


def bench_step(found: dict) -> dict:
    steps = []
    for name in sorted(k for k in found if k.startswith("step")):
        jnas = found[name]
        torch = found.get("torch" + name[len("step"):])
        row = {"order": jnas["order"], "batch_size": jnas["config"]["batch_size"], "jnas": jnas}
        if torch is not None:
            row["pytorch"] = torch
            row["ratio_median"] = torch["median_step_s"] / jnas["median_step_s"]
            row["ratio_min"] = torch["min_step_s"] / jnas["min_step_s"]
        steps.append(row)
    first = steps[0]["jnas"]
    return {
        "machine": {"description": first["machine"], "backend": first["backend"], "device": first["device"]},
        "versions": {"jax": first["jax_version"],
                     "torch": next((s["pytorch"]["torch_version"] for s in steps if "pytorch" in s), None)},
        "shape": {"channels": first["config"]["channels"], "cells": first["config"]["cells"], "image": [32, 32, 3]},
        "steps": steps,
        "vmapped_forward": found.get("vmap"),
        "command": "OUT=gpu-out XAUTODL_WHEEL=xautodl-1.0.0-py3-none-any.whl bash experiments/gpu_run.sh",
    }


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    dirs = [Path(a) for a in argv]
    found = load(dirs)
    out = {}
    if any(k.startswith("step") for k in found):
        out[HERE / "results" / "bench_step_gpu.json"] = bench_step(found)
    targets = {
        "kernel": HERE / "results" / "kernel_gpu.json",
        "proxy_synflow": HERE / "zero_cost" / "results_synflow_all_gpu.json",
        "proxy_nwot": HERE / "zero_cost" / "results_nwot_all_gpu.json",
        "inits": HERE / "zero_cost" / "results_inits_gpu.json",
        "inits_nwot": HERE / "zero_cost" / "results_inits_nwot_gpu.json",
        "scaling": HERE / "scaling" / "results_gpu.json",
    }
    for key in found:  # every bench_proxies.py run over the space: proxy_<name>.json
        if key.startswith("proxy_"):
            targets.setdefault(key, HERE / "zero_cost" / f"results_{key[len('proxy_'):]}_all_gpu.json")
    for key, path in targets.items():
        if key in found:
            out[path] = found[key]
    for path, record in out.items():
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {path.relative_to(HERE.parent)}")
    for d in dirs:  # the scatter plots bench_proxies.py drew beside its JSON
        for png in d.glob("proxy_*.png"):
            dest = HERE / "zero_cost" / f"{png.stem.replace('proxy_', '')}_all_gpu.png"
            shutil.copyfile(png, dest)
            print(f"wrote {dest.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
