"""Local search: first-improvement hill climbing with random restarts.

Start from a uniformly random cell. Propose its one-edge neighbours (6 edges x 4
other ops = 24) in random order, without repeats; move to the first neighbour whose
fitness is strictly better and start again from there. When all 24 neighbours have
been tried without improvement the current cell is a local optimum, and the next
query is a fresh random cell (a restart).

Not one of the NAS-Bench-201 paper's baselines; a simple extra that is known to be
strong on small tabular spaces.

References:
  White, Nolen, Ravanbakhsh & Savani, "Exploring the Loss Landscape in Neural
  Architecture Search", UAI 2021 ("local search is state of the art for NAS
  benchmarks").
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jnas.search.discrete import DiscreteSearcher
from jnas.spaces import nb201

NUM_NEIGHBOURS = nb201.NUM_EDGES * (nb201.NUM_OPS - 1)  # 24


class LocalSearchState(NamedTuple):
    """State of local search.

    Attributes:
      current: ``(6,)`` int32, the cell whose neighbourhood is being explored.
      current_fitness: float32 scalar.
      has_current: bool scalar; False before the first query and after a local
        optimum, when the next ask is a random restart.
      tried: ``(24,)`` bool, which neighbours of ``current`` were already told
        (neighbour ``j`` changes edge ``j // 4`` by adding ``j % 4 + 1`` mod 5).
      num_told: int32 scalar.
    """

    current: jax.Array
    current_fitness: jax.Array
    has_current: jax.Array
    tried: jax.Array
    num_told: jax.Array


def neighbour(encoding: jax.Array, index: jax.Array) -> jax.Array:
    """The ``index``-th of the 24 one-edge neighbours of ``encoding``."""
    edge = index // (nb201.NUM_OPS - 1)
    shift = index % (nb201.NUM_OPS - 1) + 1
    return encoding.at[edge].set((encoding[edge] + shift) % nb201.NUM_OPS)


def local_search() -> DiscreteSearcher:
    """First-improvement local search over one-edge neighbourhoods, restarting at local optima.

    Returns:
      A :class:`~jnas.search.discrete.DiscreteSearcher` over :class:`LocalSearchState`;
      ``tell`` expects a scalar fitness. A told cell that is neither a restart nor a
      neighbour of the current cell (a caller not following ``ask``) is ignored.

    References:
      White et al., UAI 2021.
    """

    def init(key):
        del key
        return LocalSearchState(
            current=jnp.zeros((nb201.NUM_EDGES,), jnp.int32),
            current_fitness=jnp.full((), -jnp.inf, jnp.float32),
            has_current=jnp.zeros((), bool),
            tried=jnp.zeros((NUM_NEIGHBOURS,), bool),
            num_told=jnp.zeros((), jnp.int32),
        )

    def ask(key, state):
        restart_key, pick_key = jax.random.split(key)
        fresh = nb201.sample(restart_key)
        # uniform over the neighbours not yet tried (never all tried: tell restarts then)
        untried = jnp.where(state.tried, -jnp.inf, 0.0)
        index = jax.random.categorical(pick_key, untried)
        return jnp.where(state.has_current, neighbour(state.current, index), fresh)

    def tell(state, encoding, fitness):
        encoding = jnp.asarray(encoding, jnp.int32)
        fitness = jnp.asarray(fitness, jnp.float32)
        differs = encoding != state.current
        is_neighbour = state.has_current & (jnp.sum(differs) == 1)
        edge = jnp.argmax(differs)
        shift = (encoding[edge] - state.current[edge]) % nb201.NUM_OPS
        index = edge * (nb201.NUM_OPS - 1) + shift - 1

        restart = ~state.has_current
        improved = is_neighbour & (fitness > state.current_fitness)
        move = restart | improved
        tried = jnp.where(
            move,
            jnp.zeros_like(state.tried),
            jnp.where(is_neighbour, state.tried.at[index].set(True), state.tried),
        )
        stuck = ~move & jnp.all(tried)
        return LocalSearchState(
            current=jnp.where(move, encoding, state.current),
            current_fitness=jnp.where(move, fitness, state.current_fitness),
            has_current=move | (state.has_current & ~stuck),
            tried=jnp.where(stuck, jnp.zeros_like(tried), tried),
            num_told=state.num_told + 1,
        )

    return DiscreteSearcher(init, ask, tell)
