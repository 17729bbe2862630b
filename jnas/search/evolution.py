"""Regularized (aging) evolution, single- and multi-objective.

Regularized evolution keeps a population of fixed size. The first
``population_size`` queries are uniformly random cells; after that each query is a
child: draw ``sample_size`` members uniformly (with replacement), take the fittest
as the parent, and change one of its edges to a different op
(``nb201.mutate``). When the child is told, the *oldest* member of the population
dies, whatever its fitness: that is the "aging" that distinguishes it from
tournament selection that removes the worst.

The population is a ring buffer of arrays, with each member's birth step kept so
that "the oldest" is explicit: a ``tell`` overwrites the slot of smallest birth
step (an empty slot, birth ``-1``, while the population fills up).

Defaults are those of the NAS-Bench-201 paper's REA baseline: population 10,
sample (tournament) size 3, as in the documented reproduction command
``bash ./scripts-search/algos/R-EA.sh cifar10 3 -1`` and the
``--ea_population 10`` of ``scripts-search/NAS-Bench-201-algos/R-EA.sh`` in
D-X-Y/AutoDL-Projects (the ``--ea_cycles 200`` there is unused once a time budget
is set: the budget ends the search).

References:
  Real, Aggarwal, Huang & Le, "Regularized Evolution for Image Classifier
  Architecture Search", AAAI 2019 (Algorithm 1).
  Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural
  Architecture Search", ICLR 2020.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jnas.search.discrete import DiscreteSearcher
from jnas.spaces import nb201

# Published REA hyperparameters for NAS-Bench-201 (see the module docstring).
NB201_POPULATION_SIZE = 10
NB201_SAMPLE_SIZE = 3


class EvolutionState(NamedTuple):
    """State of regularized evolution.

    Attributes:
      population: ``(P, 6)`` int32 encodings; rows with ``birth < 0`` are empty.
      fitness: ``(P,)`` float32 fitness of each member (``-inf`` where empty).
      birth: ``(P,)`` int32 index of the ``tell`` that added each member, ``-1``
        where empty. The member of smallest birth is the oldest.
      num_told: int32 scalar, how many children/random cells were told.
    """

    population: jax.Array
    fitness: jax.Array
    birth: jax.Array
    num_told: jax.Array


def _check_sizes(population_size: int, sample_size: int) -> None:
    if int(population_size) < 1:
        raise ValueError(f"population_size must be >= 1, got {population_size}")
    if int(sample_size) < 1:
        raise ValueError(f"sample_size must be >= 1, got {sample_size}")


def _empty_population(population_size: int):
    population = jnp.zeros((population_size, nb201.NUM_EDGES), jnp.int32)
    birth = jnp.full((population_size,), -1, jnp.int32)
    return population, birth


def _replace_oldest(population, birth, values, encoding, value, num_told):
    """Writes ``encoding``/``value`` over the oldest (or an empty) slot."""
    slot = jnp.argmin(birth)  # empty slots have birth -1, so they fill first
    population = population.at[slot].set(jnp.asarray(encoding, jnp.int32))
    values = values.at[slot].set(jnp.asarray(value, values.dtype))
    birth = birth.at[slot].set(num_told)
    return population, birth, values


def regularized_evolution(
    population_size: int = NB201_POPULATION_SIZE,
    sample_size: int = NB201_SAMPLE_SIZE,
) -> DiscreteSearcher:
    """Regularized (aging) evolution on NAS-Bench-201 cells.

    Args:
      population_size: members kept alive (``P``). The first ``P`` queries are
        uniformly random cells. Default 10, the NAS-Bench-201 paper's value.
      sample_size: members drawn, uniformly with replacement, for each tournament
        (``S``); the fittest of them (the first drawn on ties) is the parent.
        Default 3, the NAS-Bench-201 paper's value.

    Returns:
      A :class:`~jnas.search.discrete.DiscreteSearcher` over :class:`EvolutionState`.
      ``tell`` expects a scalar fitness (larger is better).

    References:
      Real et al., AAAI 2019, Algorithm 1; Dong & Yang, ICLR 2020.
    """
    _check_sizes(population_size, sample_size)
    population_size, sample_size = int(population_size), int(sample_size)

    def init(key):
        del key
        population, birth = _empty_population(population_size)
        return EvolutionState(
            population=population,
            fitness=jnp.full((population_size,), -jnp.inf, jnp.float32),
            birth=birth,
            num_told=jnp.zeros((), jnp.int32),
        )

    def ask(key, state):
        random_key, tournament_key, mutate_key = jax.random.split(key, 3)
        fresh = nb201.sample(random_key)
        contestants = jax.random.randint(tournament_key, (sample_size,), 0, population_size)
        parent = state.population[contestants[jnp.argmax(state.fitness[contestants])]]
        child = nb201.mutate(mutate_key, parent)
        return jnp.where(state.num_told < population_size, fresh, child)

    def tell(state, encoding, fitness):
        population, birth, values = _replace_oldest(
            state.population, state.birth, state.fitness, encoding, fitness, state.num_told
        )
        return EvolutionState(population, values, birth, state.num_told + 1)

    return DiscreteSearcher(init, ask, tell)


# ----------------------------------------------------------------------------------
# Multi-objective
# ----------------------------------------------------------------------------------


def dominates(a: jax.Array, b: jax.Array) -> jax.Array:
    """Whether objective vector ``a`` Pareto-dominates ``b`` (all objectives maximised).

    ``a`` dominates ``b`` when it is no worse in every objective and strictly better
    in at least one. Broadcasts over leading axes.
    """
    return jnp.all(a >= b, axis=-1) & jnp.any(a > b, axis=-1)


class ParetoEvolutionState(NamedTuple):
    """State of multi-objective aging evolution.

    Attributes:
      population: ``(P, 6)`` int32 encodings; rows with ``birth < 0`` are empty.
      objectives: ``(P, M)`` float32 objective vectors (maximised).
      birth: ``(P,)`` int32 birth step, ``-1`` where empty.
      num_told: int32 scalar.
      archive: ``(A, 6)`` int32 encodings of the non-dominated set found so far.
      archive_objectives: ``(A, M)`` float32.
      archive_valid: ``(A,)`` bool, which archive rows hold a member.
      archive_overflow: bool scalar, set once a non-dominated point found no free
        archive row (it was then dropped; raise ``archive_size``).
    """

    population: jax.Array
    objectives: jax.Array
    birth: jax.Array
    num_told: jax.Array
    archive: jax.Array
    archive_objectives: jax.Array
    archive_valid: jax.Array
    archive_overflow: jax.Array


def pareto_evolution(
    num_objectives: int = 2,
    population_size: int = NB201_POPULATION_SIZE,
    sample_size: int = NB201_SAMPLE_SIZE,
    archive_size: int = 256,
) -> DiscreteSearcher:
    """Aging evolution with several objectives, keeping the Pareto front found.

    The population, aging and mutation are those of :func:`regularized_evolution`.
    Only the tournament changes: the parent is the sampled member that the fewest
    members of the current population dominate (its Pareto rank within the
    population; the first drawn on ties), so every non-dominated member is an
    equally likely parent and the search spreads along the front instead of
    collapsing onto one weighted sum.

    Next to the population, the state keeps an archive of every evaluated cell that
    no other evaluated cell dominates: a cell enters the archive unless an archive
    member dominates it or has exactly its objectives, and it evicts the members it
    dominates. The archive never ages, so it is the front of the whole search.

    Args:
      num_objectives: length ``M`` of the fitness vectors given to ``tell``. On
        NAS-Bench-201 the experiments use ``(accuracy, -params)``: the table has no
        FLOPs column, so parameters are the only cost objective.
      population_size: as in :func:`regularized_evolution` (default 10).
      sample_size: as in :func:`regularized_evolution` (default 3).
      archive_size: rows of the archive. NAS-Bench-201's whole accuracy/params front
        has a few dozen cells, so 256 does not overflow there.

    Returns:
      A :class:`~jnas.search.discrete.DiscreteSearcher` over
      :class:`ParetoEvolutionState`; ``tell`` expects fitness of shape ``(M,)``.

    References:
      Real et al., AAAI 2019 (aging evolution); Deb et al., "A fast and elitist
      multiobjective genetic algorithm: NSGA-II", IEEE TEC 2002 (selection by
      domination count).
    """
    _check_sizes(population_size, sample_size)
    if int(num_objectives) < 1 or int(archive_size) < 1:
        raise ValueError("num_objectives and archive_size must be >= 1")
    population_size, sample_size = int(population_size), int(sample_size)
    num_objectives, archive_size = int(num_objectives), int(archive_size)

    def init(key):
        del key
        population, birth = _empty_population(population_size)
        return ParetoEvolutionState(
            population=population,
            objectives=jnp.full((population_size, num_objectives), -jnp.inf, jnp.float32),
            birth=birth,
            num_told=jnp.zeros((), jnp.int32),
            archive=jnp.zeros((archive_size, nb201.NUM_EDGES), jnp.int32),
            archive_objectives=jnp.full((archive_size, num_objectives), -jnp.inf, jnp.float32),
            archive_valid=jnp.zeros((archive_size,), bool),
            archive_overflow=jnp.zeros((), bool),
        )

    def ask(key, state):
        random_key, tournament_key, mutate_key = jax.random.split(key, 3)
        fresh = nb201.sample(random_key)
        alive = state.birth >= 0
        # dominated_by[i]: how many living members dominate member i
        pairwise = dominates(state.objectives[:, None, :], state.objectives[None, :, :])
        dominated_by = jnp.sum(pairwise & alive[:, None], axis=0)
        contestants = jax.random.randint(tournament_key, (sample_size,), 0, population_size)
        parent = state.population[contestants[jnp.argmin(dominated_by[contestants])]]
        child = nb201.mutate(mutate_key, parent)
        return jnp.where(state.num_told < population_size, fresh, child)

    def tell(state, encoding, fitness):
        fitness = jnp.asarray(fitness, jnp.float32).reshape(num_objectives)
        encoding = jnp.asarray(encoding, jnp.int32)
        population, birth, objectives = _replace_oldest(
            state.population, state.birth, state.objectives, encoding, fitness, state.num_told
        )
        valid = state.archive_valid
        blocked = jnp.any(
            valid & (dominates(state.archive_objectives, fitness) | jnp.all(state.archive_objectives == fitness, -1))
        )
        evicted = valid & dominates(fitness, state.archive_objectives)
        valid_after = valid & ~jnp.where(blocked, False, evicted)
        free = ~valid_after
        has_room = jnp.any(free)
        insert = ~blocked & has_room
        slot = jnp.argmax(free)
        archive = jnp.where(insert, state.archive.at[slot].set(encoding), state.archive)
        archive_objectives = jnp.where(
            insert, state.archive_objectives.at[slot].set(fitness), state.archive_objectives
        )
        valid_after = jnp.where(insert, valid_after.at[slot].set(True), valid_after)
        return ParetoEvolutionState(
            population=population,
            objectives=objectives,
            birth=birth,
            num_told=state.num_told + 1,
            archive=archive,
            archive_objectives=archive_objectives,
            archive_valid=valid_after,
            archive_overflow=state.archive_overflow | (~blocked & ~has_room),
        )

    return DiscreteSearcher(init, ask, tell)
