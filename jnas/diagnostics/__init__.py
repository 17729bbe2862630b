"""Stability diagnostics of differentiable searches: Hessian eigenvalues, op weights."""

from jnas.diagnostics.hessian import dense_hessian, dominant_eigenvalue, hvp
from jnas.diagnostics.op_weights import PARAMETER_FREE_OPS, parameter_free_weight, skip_count

__all__ = [
    "PARAMETER_FREE_OPS",
    "dense_hessian",
    "dominant_eigenvalue",
    "hvp",
    "parameter_free_weight",
    "skip_count",
]
