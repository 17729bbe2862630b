"""Random search: every query is a uniformly random NAS-Bench-201 cell.

The baseline of the NAS-Bench-201 paper ("RS"): sample cells uniformly (with
replacement, so a cell may be queried and charged twice), keep the one with the
best reward. Keeping the best is the protocol's job (``jnas.benchmarks.protocol``),
so the searcher itself only counts its queries.

References:
  Bergstra & Bengio, "Random Search for Hyper-Parameter Optimization", JMLR 2012.
  Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural
  Architecture Search", ICLR 2020 (reference code: ``exps/NAS-Bench-201-algos/RANDOM.py``
  in D-X-Y/AutoDL-Projects).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jnas.search.discrete import DiscreteSearcher
from jnas.spaces import nb201


class RandomSearchState(NamedTuple):
    """Attributes: num_told: how many fitness values were reported (int32 scalar)."""

    num_told: jax.Array


def random_search() -> DiscreteSearcher:
    """Uniform random search over the NAS-Bench-201 cells.

    Returns:
      A :class:`~jnas.search.discrete.DiscreteSearcher`. ``ask`` draws each of the
      six ops uniformly from the five (``nb201.sample``); ``tell`` ignores the
      fitness.
    """

    def init(key):
        del key
        return RandomSearchState(num_told=jnp.zeros((), jnp.int32))

    def ask(key, state):
        del state
        return nb201.sample(key)

    def tell(state, encoding, fitness):
        del encoding, fitness
        return RandomSearchState(num_told=state.num_told + 1)

    return DiscreteSearcher(init, ask, tell)
