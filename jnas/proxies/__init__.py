"""Zero-cost proxies for NAS-Bench-201, batched over architectures and initialisations.

Registry::

    from jnas.proxies import PROXIES, get
    score_fn = get("synflow")        # (params, batch, encodings, key, *, config, capacity) -> (A,)

Every proxy is a pure function of (parameters, batch ``(images (B,H,W,C), labels (B,))``,
architecture encodings ``(A, 6)``, key) returning one score per architecture, higher
meaning better-predicted. ``jnas.proxies.batched`` compiles one call that scores ``A``
architectures under ``I`` initialisations and streams the 15,625 cells in chunks.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from jnas.proxies import activation, counts, gradient


@dataclasses.dataclass(frozen=True)
class Proxy:
    """A registered proxy.

    Attributes:
      fn: ``(params, batch, encodings, key, *, config, capacity) -> (A,)``.
      needs_data: whether it reads images/labels (else only their shape).
      needs_labels: whether it reads labels.
      note: one line on the variant and the scale of its values.
      prunable: whether the proxy scores an architecture exactly as its pruned form
        (``jnas.spaces.nb201.prune_dead_edges``), so ``batched.score_archs`` can score
        each distinct pruned cell once: true of every proxy that reads only the cell's
        function and the gradients of its weights (pruned edges output exact zeros or
        are never used, so their weights have zero gradient). Not NASWOT (it reads the
        ReLU codes in front of every conv, used or not), Zen (every BN's statistics),
        params or flops (every op counts).
    """

    fn: Callable
    needs_data: bool
    needs_labels: bool
    note: str
    prunable: bool = False


PROXIES: dict[str, Proxy] = {
    "synflow": Proxy(gradient.synflow, False, False,
                     "natural log of Σ θ·∂R/∂θ (all-ones input, |θ|, rescaled float32), one forward-mode pass", prunable=True),
    "synflow_abs": Proxy(functools.partial(gradient.synflow, exact=True), False, False,
                         "natural log of Σ |θ·∂R/∂θ| (zero-cost-nas's sum), one backward pass", prunable=True),
    "snip": Proxy(gradient.snip, True, True, "sum |θ·∂L/∂θ|", prunable=True),
    "grasp": Proxy(gradient.grasp, True, True, "sum -θ·Hg", prunable=True),
    "fisher": Proxy(gradient.fisher, True, True, "channel Fisher, broadcast per weight as the reference", prunable=True),
    "grad_norm": Proxy(gradient.grad_norm, True, True, "sum of per-layer weight-gradient norms", prunable=True),
    "jacob_cov": Proxy(gradient.jacob_cov, True, False, "Jacobian correlation eigenvalue score", prunable=True),
    "nwot": Proxy(activation.nwot, True, False, "NASWOT log|det K_H|"),
    "zen": Proxy(activation.zen, False, False, "Zen-score (Gaussian weights and inputs)"),
    "params": Proxy(counts.params, False, False, "parameter count"),
    "flops": Proxy(counts.flops, False, False, "million multiply-accumulates per image"),
}


def get(name: str) -> Proxy:
    """The proxy called ``name``; ``KeyError`` naming the known ones otherwise."""
    if name not in PROXIES:
        raise KeyError(f"unknown proxy {name!r} (known: {', '.join(PROXIES)})")
    return PROXIES[name]


__all__ = ["PROXIES", "Proxy", "get"]
