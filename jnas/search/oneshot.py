"""Discrete searchers whose fitness is a trained supernet's held-out accuracy.

The weight-sharing ("one-shot") mode of the discrete searchers: instead of looking a
cell up in a table, a query scores the cell with the shared weights of a supernet
trained beforehand (e.g. by SPOS, :mod:`jnas.search.spos`). There is no simulated
time budget: every run makes a fixed number of queries.

``R`` independent runs of a searcher are vmapped: each iteration asks ``R`` cells
(one per run), scores all of them in ONE vmapped supernet call, and tells each run
its own cell's fitness. Run ``i`` uses the key ``fold_in(key(seed), i)`` (as in
:func:`jnas.search.discrete.run_keys`), split into its init key and its run key;
query ``t`` asks with ``fold_in(run_key, t)``. So a run's trajectory does not depend
on how many runs are batched with it (up to float rounding of batched convolutions).

Devices: with a ``mesh`` (:mod:`jnas.parallel`), the runs are split over its devices.
Runs share nothing but the fitness data, so each device runs the same iteration on its
``R / N`` runs under ``jax.shard_map``, with no communication; a run's queries are the
ones it makes on one device (up to the same float rounding).

Also: Kendall's τ-b, to measure how well supernet scores rank cells against a
ground truth such as NAS-Bench-201's accuracies.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from jnas import parallel
from jnas.search import spos
from jnas.search.discrete import DiscreteSearcher, run_keys
from jnas.supernet import nb201 as supernet

# fitness_fn(fitness_data, encodings (R, 6)) -> (R,) fitness, traceable
FitnessFn = Callable[[Any, jax.Array], jax.Array]


class SupernetFitnessData(NamedTuple):
    """The arrays a supernet fitness reads (passed to the jitted iteration as arguments,
    not baked into it as constants)."""

    params: Any
    image_batches: jax.Array  # (NB, B, H, W, C)
    label_batches: jax.Array  # (NB, B)


def supernet_fitness(config: supernet.SupernetConfig, chunk_size: int | None = None) -> FitnessFn:
    """Fitness = held-out accuracy of the cell under the shared weights, in percent.

    Percent, like NAS-Bench-201's accuracies, so that searchers tuned on the table
    (REINFORCE's learning rate, for one) see rewards of the same scale.

    Args:
      config: the supernet's shape.
      chunk_size: cells per vmapped evaluation (see :func:`spos.population_accuracy`).

    Returns:
      ``fitness_fn(data, encodings)`` for a :class:`SupernetFitnessData`.
    """

    def fitness_fn(data: SupernetFitnessData, encodings):
        return 100.0 * spos.population_accuracy(
            data.params, encodings, data.image_batches, data.label_batches, config, chunk_size
        )

    return fitness_fn




class RunsResult(NamedTuple):
    """``R`` runs of ``Q`` queries, on the host.

    Attributes:
      encodings: ``(R, Q, 6)`` int32 cells asked, in order.
      fitness: ``(R, Q)`` float32 their fitness.
      best_encoding: ``(R, 6)`` the best-fitness cell of each run (first on ties).
      best_fitness: ``(R,)`` its fitness.
      state: final searcher states, leaves with a leading ``R`` axis.
    """

    encodings: np.ndarray
    fitness: np.ndarray
    best_encoding: np.ndarray
    best_fitness: np.ndarray
    state: Any


def make_iteration(searcher: DiscreteSearcher, fitness_fn: FitnessFn, mesh: Mesh | None = None):
    """One jitted query of every run: ``(states, run_keys, t, data) -> (states, encodings, fitness)``.

    ``ask`` and ``tell`` are vmapped over runs; ``fitness_fn`` sees all ``R`` cells at
    once, so a supernet scores them in one vmapped call. ``t`` is traced: the same
    compiled iteration serves every query.

    With a ``mesh``, every device runs this iteration on its ``R / N`` runs (``R`` a
    multiple of the device count): give it ``states`` and ``run_keys`` from
    :func:`jnas.parallel.shard_leading_axis`, ``t`` and ``data`` from
    :func:`jnas.parallel.replicate`. The states stay split; the asked cells and their
    fitness come back replicated (a few bytes per run), for every process to read.
    """

    def iteration(states, keys, t, data):
        ask_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys)
        encodings = jax.vmap(searcher.ask)(ask_keys, states).astype(jnp.int32)
        fitness = jnp.asarray(fitness_fn(data, encodings), jnp.float32)
        states = jax.vmap(searcher.tell)(states, encodings, fitness)
        return states, encodings, fitness

    if mesh is None:
        return jax.jit(iteration)
    runs = P(parallel.DATA_AXIS)
    per_device = jax.shard_map(iteration, mesh=mesh, in_specs=(runs, runs, P(), P()), out_specs=runs,
                               check_vma=False)  # see population_fitness
    whole = parallel.replicated_sharding(mesh)
    return jax.jit(per_device, out_shardings=(parallel.data_sharding(mesh), whole, whole))


def population_fitness(fitness_fn: FitnessFn, data, encodings, mesh: Mesh) -> np.ndarray:
    """``fitness_fn(data, encodings)`` on the host, the cells split over the devices of ``mesh``.

    Any number ``P`` of cells: they are padded to a multiple of the device count (with
    the last cell) and the padding dropped. Each device scores its cells as
    :func:`make_iteration`'s do, with no communication.
    """
    encodings = np.asarray(encodings, np.int32)
    pad = -len(encodings) % mesh.devices.size
    padded = np.concatenate([encodings, np.repeat(encodings[-1:], pad, axis=0)])
    cells = P(parallel.DATA_AXIS)
    # check_vma=False: a fitness need not type its carries as varying over the split axis
    # (spos.population_accuracy's scan starts from a replicated zero); nothing is reduced over it
    per_device = jax.shard_map(fitness_fn, mesh=mesh, in_specs=(P(), cells), out_specs=cells, check_vma=False)
    score = jax.jit(per_device, out_shardings=parallel.replicated_sharding(mesh))
    fitness = score(parallel.replicate(data, mesh), parallel.shard_leading_axis(padded, mesh))
    return np.asarray(fitness)[: len(encodings)]


def run_searchers(searcher: DiscreteSearcher, fitness_fn: FitnessFn, data, num_runs: int, num_queries: int,
                  seed: int = 0, start: int = 0, progress: bool = False, mesh: Mesh | None = None) -> RunsResult:
    """Runs ``num_runs`` independent searches of ``num_queries`` queries each, vmapped.

    Args:
      searcher: the strategy (e.g. ``jnas.search.discrete.make("rea")``).
      fitness_fn: ``fitness_fn(data, encodings (R, 6)) -> (R,)``, maximised; e.g.
        :func:`supernet_fitness`.
      data: the pytree of arrays ``fitness_fn`` reads.
      num_runs: ``R``.
      num_queries: ``Q``, queries per run (fixed; no time budget).
      seed: base seed; run ``i`` uses ``fold_in(key(seed), start + i)``.
      start: index of the first run (to run a subset of runs alone).
      progress: tqdm bar over queries.
      mesh: split the runs over its devices (``num_runs`` must be a multiple of
        their count); None: one device.

    Returns:
      :class:`RunsResult`.
    """
    from tqdm.auto import tqdm

    if int(num_runs) < 1 or int(num_queries) < 1:
        raise ValueError(f"num_runs and num_queries must be >= 1, got {num_runs} and {num_queries}")
    keys = run_keys(seed, int(num_runs), int(start))
    init_keys, search_keys = jax.vmap(lambda k: tuple(jax.random.split(k)))(keys)
    states = jax.vmap(searcher.init)(init_keys)
    if mesh is not None:  # raises a ValueError naming both counts if the runs do not split evenly
        states, search_keys = parallel.shard_leading_axis((states, search_keys), mesh)
        data = parallel.replicate(data, mesh)

    def query(t):  # the iteration's traced query index
        return jnp.asarray(np.uint32(t)) if mesh is None else parallel.replicate(np.uint32(t), mesh)

    iteration = make_iteration(searcher, fitness_fn, mesh)
    encodings, fitness = [], []
    for t in tqdm(range(int(num_queries)), desc="queries", unit="query", disable=None if progress else True,
                  leave=False):
        states, enc, fit = iteration(states, search_keys, query(t), data)
        encodings.append(enc)
        fitness.append(fit)
    encodings = np.stack(jax.device_get(encodings), axis=1)
    fitness = np.stack(jax.device_get(fitness), axis=1)
    if mesh is not None:
        states = parallel.gather(states, mesh)
    best = np.argmax(fitness, axis=1)  # first on ties
    rows = np.arange(fitness.shape[0])
    return RunsResult(encodings, fitness, encodings[rows, best], fitness[rows, best], jax.device_get(states))


def kendall_tau(x, y) -> float:
    """Kendall's τ-b between two score vectors (ties handled as in scipy's default).

    ``(C - D) / sqrt((P - Tx) (P - Ty))`` over the ``P = n(n-1)/2`` pairs, where ``C``
    and ``D`` count concordant and discordant pairs and ``Tx``, ``Ty`` the pairs tied
    in ``x`` and in ``y``. O(n²) in memory-bounded row blocks; fine for thousands of
    cells. NaN when either vector is constant.
    """
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"need two vectors of equal length >= 2, got {x.shape} and {y.shape}")
    score = untied_x = untied_y = 0
    block = max(1, 2_000_000 // x.size)
    for lo in range(0, x.size, block):
        sx = np.sign(x[lo : lo + block, None] - x[None, :]).astype(np.int64)
        sy = np.sign(y[lo : lo + block, None] - y[None, :]).astype(np.int64)
        score += int(np.sum(sx * sy))
        untied_x += int(np.sum(sx != 0))
        untied_y += int(np.sum(sy != 0))
    # every unordered pair was counted twice (i, j) and (j, i): the factors cancel
    if untied_x == 0 or untied_y == 0:
        return float("nan")
    return float(score / np.sqrt(float(untied_x) * float(untied_y)))
