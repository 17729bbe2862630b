"""PyTorch reference timing of one DARTS search step on the NAS-Bench-201 supernet.

The reference is the NAS-Bench-201 authors' own code: the ``DARTS-V1`` supernet
``TinyNetworkDarts`` from the ``xautodl`` package (AutoDL-Projects), driven the
way its ``exps/NAS-Bench-201-algos/DARTS-V1.py`` drives it (Adam on the
architecture parameters, nesterov SGD with gradient clipping on the weights,
cross-entropy, network in train mode).  ``--order 2`` adds the DARTS
second-order (unrolled) architecture gradient, which xautodl does not ship;
it is written here from Liu et al. 2019, Eq. 7-8.

This script must NOT import jnas and runs in its own virtual environment so
that jnas's environment stays torch-free.

Install (once; the torch wheel is a CPU build)::

    python3 -m venv /work/torchvenv
    /work/torchvenv/bin/pip install torch==2.13.0
    # xautodl's declared dependencies pin old releases that fail to build;
    # the supernet itself needs only torch and numpy.
    /work/torchvenv/bin/pip install --no-deps xautodl
    /work/torchvenv/bin/pip install numpy psutil

Run (prints one JSON line on stdout)::

    /work/torchvenv/bin/python experiments/bench_step/pytorch_reference.py \\
        --order 1 --batch-size 64 --channels 16 --cells 5 --image-size 32 \\
        --in-channels 3 --num-classes 10 --steps 5 --warmup 1 --threads 2 --json

Expected runtime on the 2-core CPU of this workplace, full configuration
(batch 64, C=16, N=5, 32x32x3, 10 classes), when the machine is otherwise
idle: about 4.3-4.6 s per first-order step and 10.7-12 s per second-order
step, so roughly 30 s for ``--order 1`` and roughly 80 s for ``--order 2``
with ``--steps 5 --warmup 1`` (plus a few seconds of start-up); peak RSS
about 2.6-2.9 GB for either order.  When other jobs share the two cores,
steps were seen to take 5-15x longer (up to 50 s first-order, 160 s
second-order), so ``min_step_s`` is reported beside the median.  The smoke
configuration (``--batch-size 4 --channels 4 --cells 1 --image-size 8``)
takes about 0.05-0.3 s (order 1) / 0.1-1 s (order 2) per step, under 30 s
for the whole run.

One timed step is, in this order:

1. architecture update on a validation batch: gradient of the validation
   cross-entropy w.r.t. the architecture parameters (``get_alphas()``) --
   first order: at the current weights; second order: the unrolled gradient
   below -- then ``Adam(lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)``;
2. weight update on a training batch: gradient of the training cross-entropy
   w.r.t. the weights (``get_weights()``), ``clip_grad_norm_(weights, 5)``,
   then ``SGD(lr=0.025, momentum=0.9, nesterov=True, weight_decay=5e-4)``.

Second-order architecture gradient (DARTS Eq. 7-8, as in the original
``architect.py``), with xi = the weight learning rate:

* unrolled weights  w' = w - xi * (mu * momentum_buffer + grad_w L_train(w, a) + wd * w)
  (momentum buffer taken as zero before the first SGD step);
* g_a = grad_a L_val(w', a) and v = grad_w' L_val(w', a) from one backward pass;
* eps = 0.01 / ||v||,  w+- = w +- eps * v;
* hvp = (grad_a L_train(w+, a) - grad_a L_train(w-, a)) / (2 eps);
* architecture gradient = g_a - xi * hvp.

The unrolled model is evaluated by swapping w' into the network's parameters
in place (and restoring w afterwards) rather than building a second network
as the original code does; this can only make the reference faster.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SEARCH_SPACE = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]

# Hyper-parameters of the NAS-Bench-201 DARTS search (xautodl defaults).
ARCH_LR = 3e-4
ARCH_BETAS = (0.5, 0.999)
ARCH_WD = 1e-3
W_LR = 0.025
W_MOMENTUM = 0.9
W_WD = 5e-4
GRAD_CLIP = 5.0
HVP_R = 1e-2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--order", type=int, choices=[1, 2], default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--cells", type=int, default=5)
    p.add_argument("--max-nodes", type=int, default=4)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (times include a synchronize)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.add_argument("--serve", action="store_true",
                   help="after the warm-up, print a 'ready' JSON line, then run one timed step per 'step' line on "
                        "stdin (printing its seconds) until 'done'; --steps is ignored (compare.py interleaves "
                        "these steps with jnas's)")
    return p.parse_args(argv)


def build_network(args) -> nn.Module:
    from xautodl.models import get_cell_based_tiny_net
    from xautodl.models.cell_searchs.search_model_darts import TinyNetworkDarts

    config = {
        "name": "DARTS-V1",
        "C": args.channels,
        "N": args.cells,
        "max_nodes": args.max_nodes,
        "num_classes": args.num_classes,
        "space": list(SEARCH_SPACE),
        "affine": False,
        "track_running_stats": False,
    }
    net = get_cell_based_tiny_net(config)
    # get_cell_based_tiny_net falls back to another constructor on any
    # exception; make sure we really got the DARTS-V1 supernet.
    assert isinstance(net, TinyNetworkDarts), type(net)
    if args.in_channels != 3:
        # The xautodl stem hard-codes 3 input channels; swap in an
        # identical conv with the requested input width.
        net.stem[0] = nn.Conv2d(
            args.in_channels, args.channels, kernel_size=3, padding=1, bias=False
        )
    return net


def loss_of(net, x, y):
    _, logits = net(x)
    return F.cross_entropy(logits, y)


@torch.no_grad()
def _assign(params, values):
    for p, v in zip(params, values):
        p.copy_(v)


def unrolled_arch_grads(net, weights, alphas, w_optimizer, xt, yt, xv, yv):
    """DARTS second-order gradient of L_val w.r.t. alphas (Eq. 7-8)."""
    xi = w_optimizer.param_groups[0]["lr"]
    mu = w_optimizer.param_groups[0]["momentum"]
    wd = w_optimizer.param_groups[0]["weight_decay"]

    # w' = w - xi * (mu * buf + grad_w L_train(w) + wd * w)
    train_loss = loss_of(net, xt, yt)
    dw = torch.autograd.grad(train_loss, weights)
    with torch.no_grad():
        w_saved = [p.detach().clone() for p in weights]
        w_unrolled = []
        for p, g in zip(weights, dw):
            step = g + wd * p
            buf = w_optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                step = step + mu * buf
            w_unrolled.append(p - xi * step)
    del dw, train_loss

    # Gradient of L_val(w', alpha) w.r.t. alpha and w'.
    _assign(weights, w_unrolled)
    del w_unrolled
    val_loss = loss_of(net, xv, yv)
    grads = torch.autograd.grad(val_loss, list(alphas) + list(weights))
    d_alpha = list(grads[: len(alphas)])
    vector = list(grads[len(alphas):])
    del grads, val_loss

    # Finite-difference Hessian-vector product at the original weights w.
    with torch.no_grad():
        eps = HVP_R / torch.cat([v.reshape(-1) for v in vector]).norm()
        _assign(weights, [w + eps * v for w, v in zip(w_saved, vector)])
    grads_p = torch.autograd.grad(loss_of(net, xt, yt), alphas)
    with torch.no_grad():
        _assign(weights, [w - eps * v for w, v in zip(w_saved, vector)])
    grads_n = torch.autograd.grad(loss_of(net, xt, yt), alphas)
    _assign(weights, w_saved)  # restore w exactly

    with torch.no_grad():
        return [
            g - xi * (gp - gn) / (2 * eps)
            for g, gp, gn in zip(d_alpha, grads_p, grads_n)
        ]


def search_step(order, net, weights, alphas, w_optimizer, a_optimizer, batch):
    xt, yt, xv, yv = batch
    # 1. architecture update on the validation batch
    a_optimizer.zero_grad()
    if order == 1:
        # As xautodl: a plain backward() (it also fills the weights' grads,
        # which the weight step below zeroes before use).
        loss_of(net, xv, yv).backward()
    else:
        for a, g in zip(
            alphas,
            unrolled_arch_grads(net, weights, alphas, w_optimizer, xt, yt, xv, yv),
        ):
            a.grad = g
    a_optimizer.step()

    # 2. weight update on the training batch
    w_optimizer.zero_grad()
    base_loss = loss_of(net, xt, yt)
    # As xautodl: a plain backward() (it also accumulates into the alphas'
    # grads, which the next architecture step zeroes before use).
    base_loss.backward()
    torch.nn.utils.clip_grad_norm_(weights, GRAD_CLIP)
    w_optimizer.step()
    return float(base_loss.detach())


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    device = torch.device(args.device)
    net = build_network(args).to(device)
    net.train()
    weights = net.get_weights()
    alphas = net.get_alphas()
    n_weights = sum(p.numel() for p in weights)
    n_alphas = sum(p.numel() for p in alphas)
    # The two groups must partition the network's parameters.
    assert n_weights + n_alphas == sum(p.numel() for p in net.parameters())

    w_optimizer = torch.optim.SGD(
        weights, lr=W_LR, momentum=W_MOMENTUM, weight_decay=W_WD, nesterov=True
    )
    a_optimizer = torch.optim.Adam(
        alphas, lr=ARCH_LR, betas=ARCH_BETAS, weight_decay=ARCH_WD
    )

    gen = torch.Generator().manual_seed(args.seed + 1)
    shape = (args.batch_size, args.in_channels, args.image_size, args.image_size)

    def make_batch():
        return tuple(t.to(device) for t in (
            torch.randn(shape, generator=gen),
            torch.randint(0, args.num_classes, (args.batch_size,), generator=gen),
            torch.randn(shape, generator=gen),
            torch.randint(0, args.num_classes, (args.batch_size,), generator=gen),
        ))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step_times = []
    losses = []

    def timed_step():
        batch = make_batch()  # data creation is outside the timed region
        sync()
        t0 = time.perf_counter()
        loss = search_step(args.order, net, weights, alphas, w_optimizer, a_optimizer, batch)
        sync()  # float(loss) already waits on CUDA; kept explicit
        losses.append(loss)
        return time.perf_counter() - t0

    if args.serve:
        for _ in range(args.warmup):
            timed_step()
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            if line.strip() == "done":
                break
            step_times.append(timed_step())
            print(json.dumps({"step_s": step_times[-1]}), flush=True)
    else:
        for i in range(args.warmup + args.steps):
            dt = timed_step()
            if i >= args.warmup:
                step_times.append(dt)
            if not args.json:
                tag = "warmup" if i < args.warmup else "step"
                print(f"{tag} {i}: {dt:.3f} s  train loss {losses[-1]:.4f}", file=sys.stderr)

    if not all(np.isfinite(losses)):
        raise SystemExit(f"non-finite loss: {losses}")

    median = statistics.median(step_times) if step_times else float("nan")
    result = {
        "impl": "pytorch-xautodl",
        "order": args.order,
        "median_step_s": median,
        "min_step_s": min(step_times) if step_times else None,
        "step_times_s": step_times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "images_per_s": (2 * args.batch_size) / median if step_times else None,
        "torch_version": torch.__version__,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": args.threads,
        "config": {
            "batch_size": args.batch_size,
            "channels": args.channels,
            "cells": args.cells,
            "max_nodes": args.max_nodes,
            "image_size": args.image_size,
            "in_channels": args.in_channels,
            "num_classes": args.num_classes,
            "steps": len(step_times),
            "warmup": args.warmup,
            "seed": args.seed,
            "search_space": list(SEARCH_SPACE),
            "n_weight_params": n_weights,
            "n_arch_params": n_alphas,
            "python": platform.python_version(),
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
