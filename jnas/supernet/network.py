"""The interface between a search space's supernet and the differentiable searchers.

A supernet is a handful of pure functions over parameter pytrees. DARTS, PC-DARTS and
β-DARTS (``jnas.search.darts``) and the diagnostics (``jnas.diagnostics``) see only
this tuple, so one searcher serves every space.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax


class SearchNetwork(NamedTuple):
    """A differentiable search space's supernet.

    Attributes:
      init: ``key -> params``, the network weights.
      init_arch: ``key -> arch_params``, a dict with ``"alpha"`` (op logits, ops on the
        last axis) and, with PC-DARTS edge normalization, ``"beta"`` (edge logits).
      apply: ``(params, images, arch_params) -> logits``; applies the softmaxes itself.
      op_logits: ``arch_params -> α`` with ops on the last axis (the β-DARTS regularizer
        and the diagnostics read it).
      ops: op names, in the order of ``op_logits``'s last axis.
      derive: ``arch_params -> genotype`` text (the space's official form).
      gated_filter_gradients: every convolution of ``apply`` goes through
        :func:`jnas.supernet.ops.conv2d`, so a pass traced under
        :func:`jnas.supernet.ops.filter_gradients_when` skips the weight gradients at run
        time; DARTS then runs its first-order step as one compiled gradient pass for two.
    """

    init: Callable[[jax.Array], Any]
    init_arch: Callable[[jax.Array], Any]
    apply: Callable[[Any, jax.Array, Any], jax.Array]
    op_logits: Callable[[Any], jax.Array]
    ops: tuple[str, ...]
    derive: Callable[[Any], str]
    gated_filter_gradients: bool = False
