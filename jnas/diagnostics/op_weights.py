"""Where the architecture's weight goes: parameter-free ops and skip connections.

DARTS's failure mode is a drift of the op weights towards parameter-free ops
(``none``, ``skip_connect``, pooling, S4's ``noise``): they fit the validation loss early because
they need no training, and the derived cell ends up all-skip (NAS-Bench-201: 54.30 %
test accuracy on CIFAR-10). These are the per-epoch numbers that show it.
"""

from __future__ import annotations

import re

import numpy as np

# noise: RobustDARTS S4's parameter-free harmful op
PARAMETER_FREE_OPS = ("none", "skip_connect", "avg_pool_3x3", "max_pool_3x3", "noise")


def parameter_free_weight(op_weights, ops) -> np.ndarray:
    """Per edge, the summed softmax weight of the parameter-free ops.

    Args:
      op_weights: softmax(α), ops on the last axis (any leading edge axes).
      ops: the op names of the last axis.

    Returns:
      The weights' leading shape: the total weight of ``none``, ``skip_connect`` and
      pooling on each edge.
    """
    op_weights = np.asarray(op_weights)
    if op_weights.shape[-1] != len(ops):
        raise ValueError(f"op weights have {op_weights.shape[-1]} ops on the last axis, names give {len(ops)}")
    mask = np.asarray([name in PARAMETER_FREE_OPS for name in ops])
    return op_weights[..., mask].sum(axis=-1)


def skip_count(genotype: str) -> int:
    """Number of ``skip_connect`` edges in a derived cell.

    For a NAS-Bench-201 arch string, its cell; for a DARTS ``Genotype(...)``, the normal
    cell (the one whose skips RobustDARTS and DARTS+ count).
    """
    text = genotype
    if text.startswith("Genotype("):
        match = re.search(r"normal=\[(.*?)\]", text)
        text = match.group(1) if match else ""
    return text.count("skip_connect")
