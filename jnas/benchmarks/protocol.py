"""The simulated-time-budget protocol of NAS-Bench-201, for discrete searchers.

A searcher runs against a table instead of training networks. The protocol, as
in the NAS-Bench-201 paper (Dong & Yang, ICLR 2020) and its reference code
(``exps/NAS-Bench-201-algos/{R_EA,RANDOM,reinforce}.py`` in D-X-Y/AutoDL-Projects):

1. **Reward.** A query returns only what a searcher could afford to measure: the
   *validation* accuracy on the ``cifar10-valid`` split after the 12-epoch
   schedule (``c10_valid_acc_12``). The reference reads
   ``get_more_info(index, 'cifar10-valid', hp='12', is_random=True)``, i.e. one
   randomly chosen training seed; this table holds the mean over seeds, so our
   reward is a little less noisy than the reference's.
2. **Cost.** Every query, repeated or not, is charged the simulated time of that
   12-epoch training. The reference charges ``train-all-time + valid-per-time`` of
   the 12-epoch run; the table has only the 200-epoch training time
   (``cifar10_train_time_200_s``), so the cost is derived as
   ``cifar10_train_time_200_s * 12 / 200`` (the same per-epoch time, 12 epochs;
   the one evaluation pass of a few seconds is not charged).
3. **Budget.** The search stops at the first query that would take the running
   total past the budget (12000 s on CIFAR-10): that query and every later one are
   ignored (not told, not counted, not eligible as the answer).
4. **Answer.** The reported architecture is the counted query with the best
   reward (the first one on ties). The figure reported is its 200-epoch CIFAR-10
   *test* accuracy (``c10_test_acc_200``, trained on train+valid), next to its
   200-epoch validation accuracy (``c10_valid_acc_200``); the paper gives mean and
   standard deviation over 500 runs.

Small differences from the reference, each touching at most the query at the
budget's edge: the reference always evaluates REA's initial population whatever the
budget (10 queries, about 1100 s: inside any realistic budget), its REINFORCE keeps
the over-budget query in the history it picks the answer from, and it also adds
the searcher's own (real, tiny) wall-clock time to the total.

Everything is array code: a search is one ``jax.lax.scan`` over a fixed maximum
number of queries with a running simulated-time total, and queries past the budget
are masked out, so many runs are one ``jax.vmap`` over keys.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jnas.search.discrete import DiscreteSearcher, run_keys, tree_select
from jnas.spaces import nb201

# The NAS-Bench-201 paper's protocol on CIFAR-10.
NB201_BUDGET_SECONDS = 12000.0
NB201_REWARD_EPOCHS = 12
NB201_FULL_EPOCHS = 200
NB201_RUNS = 500


class TabularBenchmark(NamedTuple):
    """Per-architecture lookups, each a ``(N,)`` array indexed by base-5 code.

    A pytree of arrays, so one compiled search serves any table of the same size,
    including a hand-made one of a few rows (then the searcher must only propose
    codes below ``N``).

    Attributes:
      reward: what a query returns to the searcher (maximised).
      cost: simulated seconds charged per query.
      valid: the validation accuracy reported for the answer.
      test: the test accuracy reported for the answer.
      params: parameters in millions (the second objective of multi-objective search).
    """

    reward: jax.Array
    cost: jax.Array
    valid: jax.Array
    test: jax.Array
    params: jax.Array


def nb201_benchmark(table, reward_epochs: int = NB201_REWARD_EPOCHS) -> TabularBenchmark:
    """The NAS-Bench-201 CIFAR-10 protocol's lookups from a table.

    Args:
      table: a :class:`jnas.benchmarks.nb201.NB201Table`, or any mapping from column
        name to ``(N,)`` arrays ordered by code with ``c10_valid_acc_{epochs}``,
        ``c10_valid_acc_200``, ``c10_test_acc_200``, ``cifar10_params_mb`` and
        ``cifar10_train_time_200_s``.
      reward_epochs: 12 (the published protocol: reward ``c10_valid_acc_12``, cost
        ``time_200 * 12 / 200``) or 200 (reward ``c10_valid_acc_200``, cost the full
        200-epoch time).

    Returns:
      A :class:`TabularBenchmark` of float32 device arrays.

    Raises:
      ValueError: ``reward_epochs`` is not 12 or 200.
      KeyError: a needed column is missing.
    """
    if reward_epochs not in (NB201_REWARD_EPOCHS, NB201_FULL_EPOCHS):
        raise ValueError(f"reward_epochs must be 12 or 200, got {reward_epochs}")
    columns: Mapping[str, Any] = table.columns if hasattr(table, "columns") else table

    def column(name):
        return jnp.asarray(np.asarray(columns[name], dtype=np.float64), jnp.float32)

    time_200 = np.asarray(columns["cifar10_train_time_200_s"], dtype=np.float64)
    return TabularBenchmark(
        reward=column(f"c10_valid_acc_{reward_epochs}"),
        cost=jnp.asarray(time_200 * reward_epochs / NB201_FULL_EPOCHS, jnp.float32),
        valid=column("c10_valid_acc_200"),
        test=column("c10_test_acc_200"),
        params=column("cifar10_params_mb"),
    )


def max_queries_for(benchmark: TabularBenchmark, budget_seconds: float) -> int:
    """Enough scan steps that no run can end for want of steps before its budget.

    Even a run that queries only the cheapest cell counts at most
    ``floor(budget / min_cost)`` queries; one more step lets the crossing query be
    seen. Host-side (it fixes an array shape).
    """
    min_cost = float(np.min(np.asarray(benchmark.cost)))
    if not min_cost > 0:
        raise ValueError(f"every query must cost a positive time, the cheapest costs {min_cost}")
    return int(math.floor(float(budget_seconds) / min_cost)) + 1


def reward_fitness(benchmark: TabularBenchmark, code: jax.Array) -> jax.Array:
    """The fitness told to a single-objective searcher: the reward."""
    return benchmark.reward[code]


def reward_params_fitness(benchmark: TabularBenchmark, code: jax.Array) -> jax.Array:
    """Two objectives to maximise: the reward and minus the parameters (millions)."""
    return jnp.stack([benchmark.reward[code], -benchmark.params[code]])


class SearchTrace(NamedTuple):
    """One row per scan step (query slot), ``(T, ...)``.

    Attributes:
      encoding: ``(T, 6)`` proposed cells (also past the budget, where they are ignored).
      code: ``(T,)`` their base-5 codes.
      counted: ``(T,)`` bool, whether the query fitted in the budget (a prefix).
      elapsed: ``(T,)`` simulated seconds charged so far, after this step.
      best_code: ``(T,)`` code of the best-reward counted query so far, -1 before any.
      best_reward, best_valid, best_test: ``(T,)`` its reward and reported
        accuracies (NaN before any).
    """

    encoding: jax.Array
    code: jax.Array
    counted: jax.Array
    elapsed: jax.Array
    best_code: jax.Array
    best_reward: jax.Array
    best_valid: jax.Array
    best_test: jax.Array


class SearchResult(NamedTuple):
    """The outcome of one simulated search (add a leading run axis when vmapped).

    Attributes:
      best_code: int32, base-5 code of the answer (best reward among counted queries).
      best_reward: its reward (e.g. 12-epoch validation accuracy).
      best_valid: its reported validation accuracy (200 epochs).
      best_test: its reported test accuracy (200 epochs): the protocol's figure.
      num_queries: int32, counted queries.
      elapsed: simulated seconds charged by the counted queries.
      exhausted: bool, whether the budget (not the step limit) ended the search.
      trace: the :class:`SearchTrace`.
      state: the searcher's final state.
    """

    best_code: jax.Array
    best_reward: jax.Array
    best_valid: jax.Array
    best_test: jax.Array
    num_queries: jax.Array
    elapsed: jax.Array
    exhausted: jax.Array
    trace: SearchTrace
    state: Any


FitnessFn = Callable[[TabularBenchmark, jax.Array], jax.Array]


def simulate(
    searcher: DiscreteSearcher,
    benchmark: TabularBenchmark,
    key: jax.Array,
    budget_seconds,
    max_queries: int,
    fitness_fn: FitnessFn = reward_fitness,
) -> SearchResult:
    """Runs one search under the time-budget protocol (pure; jit/vmap it).

    Step ``t`` asks with ``fold_in(run_key, t)``, looks the cell up, and charges its
    cost. While the running total stays within ``budget_seconds`` the query is told
    to the searcher and counted; the first query that would exceed it ends the
    search, and it and all later steps are ignored (masked, so the scan keeps a
    fixed length).

    Args:
      searcher: the strategy.
      benchmark: the lookups (see :func:`nb201_benchmark`).
      key: a typed PRNG key; ``split`` into the searcher's init key and the run key.
      budget_seconds: simulated time budget (a traced scalar: changing it does not
        recompile).
      max_queries: scan length (static); :func:`max_queries_for` gives a safe value.
      fitness_fn: ``fitness_fn(benchmark, code)``, what ``tell`` receives; defaults
        to the reward. The answer is always chosen by the reward.

    Returns:
      A :class:`SearchResult`.
    """
    init_key, run_key = jax.random.split(key)
    budget = jnp.asarray(budget_seconds, jnp.float32)
    state = searcher.init(init_key)

    def step(carry, t):
        state, elapsed, active, best_code, best_reward = carry
        encoding = jnp.asarray(searcher.ask(jax.random.fold_in(run_key, t), state), jnp.int32)
        code = nb201.encoding_to_code(encoding)
        charged = elapsed + benchmark.cost[code]
        counted = active & (charged <= budget)
        told = searcher.tell(state, encoding, fitness_fn(benchmark, code))
        state = tree_select(counted, told, state)
        elapsed = jnp.where(counted, charged, elapsed)
        reward = benchmark.reward[code]
        better = counted & (reward > best_reward)
        best_code = jnp.where(better, code, best_code)
        best_reward = jnp.where(better, reward, best_reward)
        row = (encoding, code, counted, elapsed, best_code)
        return (state, elapsed, counted, best_code, best_reward), row

    carry = (
        state,
        jnp.zeros((), jnp.float32),
        jnp.ones((), bool),
        jnp.full((), -1, jnp.int32),
        jnp.full((), -jnp.inf, jnp.float32),
    )
    (state, elapsed, active, best_code, _), rows = jax.lax.scan(
        step, carry, jnp.arange(max_queries, dtype=jnp.int32)
    )
    encoding, code, counted, elapsed_trace, best_trace = rows

    def lookup(values, codes):
        return jnp.where(codes >= 0, values[jnp.maximum(codes, 0)], jnp.nan)

    trace = SearchTrace(
        encoding=encoding,
        code=code,
        counted=counted,
        elapsed=elapsed_trace,
        best_code=best_trace,
        best_reward=lookup(benchmark.reward, best_trace),
        best_valid=lookup(benchmark.valid, best_trace),
        best_test=lookup(benchmark.test, best_trace),
    )
    return SearchResult(
        best_code=best_code,
        best_reward=lookup(benchmark.reward, best_code),
        best_valid=lookup(benchmark.valid, best_code),
        best_test=lookup(benchmark.test, best_code),
        num_queries=jnp.sum(counted, dtype=jnp.int32),
        elapsed=elapsed,
        exhausted=~active,
        trace=trace,
        state=state,
    )


def batch_simulator(
    searcher: DiscreteSearcher,
    max_queries: int,
    fitness_fn: FitnessFn = reward_fitness,
) -> Callable[[TabularBenchmark, jax.Array, Any], SearchResult]:
    """A jitted ``run(benchmark, keys, budget_seconds)`` that vmaps :func:`simulate` over keys.

    Args:
      searcher: the strategy (closed over: one compiled function per searcher).
      max_queries: scan length (static).
      fitness_fn: as in :func:`simulate`.

    Returns:
      ``run(benchmark, keys, budget_seconds) -> SearchResult`` with a leading axis of
      ``len(keys)`` on every leaf. Calls with other keys, other tables of the same
      size, or another budget reuse the compiled code.
    """
    one = functools.partial(simulate, searcher, max_queries=max_queries, fitness_fn=fitness_fn)

    @jax.jit
    def run(benchmark, keys, budget_seconds):
        return jax.vmap(lambda key: one(benchmark, key, budget_seconds))(keys)

    return run




def best_on_grid(trace: SearchTrace, grid) -> jax.Array:
    """Best-so-far reported test accuracy at each simulated time of ``grid``.

    The value at time ``g`` is that of the answer the search would give if stopped
    at ``g``: the best-reward query among those whose charged total is at most
    ``g``. NaN before the first query completes.

    Args:
      trace: a :class:`SearchTrace` of one run (``(T,)`` leaves) or of many
        (``(R, T)``).
      grid: ``(G,)`` times in seconds.

    Returns:
      ``(G,)`` or ``(R, G)`` float32.
    """
    grid = jnp.asarray(grid, jnp.float32)

    def one(elapsed, counted, best_test):
        # elapsed is non-decreasing and frozen after the budget, so the last step with
        # elapsed <= g carries the answer at time g
        position = jnp.searchsorted(elapsed, grid, side="right") - 1
        value = best_test[jnp.maximum(position, 0)]
        return jnp.where((position >= 0) & counted[0], value, jnp.nan)

    if trace.elapsed.ndim == 1:
        return one(trace.elapsed, trace.counted, trace.best_test)
    return jax.vmap(one)(trace.elapsed, trace.counted, trace.best_test)


class ManyRuns(NamedTuple):
    """Independent searches under the protocol, gathered on the host (numpy).

    Attributes:
      best_code, best_reward, best_valid, best_test, num_queries, elapsed: ``(R,)``
        per run, as in :class:`SearchResult`.
      grid: ``(G,)`` simulated times (seconds) of the trajectories.
      trajectory: ``(R, G)`` best-so-far reported test accuracy at each grid time
        (:func:`best_on_grid`).
      state: the searchers' final states, leaves with a leading ``R`` axis.
      seconds: wall-clock seconds of the whole call, compilation included.
    """

    best_code: np.ndarray
    best_reward: np.ndarray
    best_valid: np.ndarray
    best_test: np.ndarray
    num_queries: np.ndarray
    elapsed: np.ndarray
    grid: np.ndarray
    trajectory: np.ndarray
    state: Any
    seconds: float


def run_many(
    searcher: DiscreteSearcher,
    benchmark: TabularBenchmark,
    num_runs: int,
    seed: int = 0,
    budget_seconds: float = NB201_BUDGET_SECONDS,
    max_queries: int | None = None,
    fitness_fn: FitnessFn = reward_fitness,
    chunk_size: int = 100,
    grid_points: int = 241,
    progress: bool = False,
    resume: Callable[[Any], tuple[int, Any] | None] | None = None,
    on_chunk: Callable[[int, Any], None] | None = None,
) -> ManyRuns:
    """Runs ``num_runs`` independent searches, vmapped in chunks, and gathers them.

    Run ``i`` uses the key ``fold_in(key(seed), i)`` (:func:`run_keys`), so its result
    does not depend on ``chunk_size``. Every chunk has the same shape (the last is
    padded with extra runs that are dropped), so the search compiles once.

    Args:
      searcher: the strategy.
      benchmark: the lookups.
      num_runs: independent runs ``R``.
      seed: base seed.
      budget_seconds: simulated time budget per run.
      max_queries: scan length; by default :func:`max_queries_for` the budget.
      fitness_fn: what ``tell`` receives (see :func:`simulate`).
      chunk_size: runs per vmapped call (bounds memory; one progress step each).
      grid_points: points of the trajectory grid, evenly spaced over ``[0, budget]``.
      progress: show a tqdm bar over the chunks on stderr, when stderr is a terminal.
      resume: ``resume(template) -> (chunks_done, buffers) | None``: the results of the
        first ``chunks_done`` chunks, saved by ``on_chunk`` of an earlier, interrupted
        call with the same arguments; ``template`` is a pytree of ``ShapeDtypeStruct``
        with the buffers' structure. The remaining chunks give exactly what an
        uninterrupted call would (each chunk depends only on its run keys).
      on_chunk: ``on_chunk(chunks_done, buffers)`` after each chunk: the per-run results
        (``(chunks * chunk_size, ...)`` host arrays, rows of later chunks still zero) to
        checkpoint.

    Returns:
      :class:`ManyRuns`.
    """
    import time

    from tqdm.auto import tqdm

    if num_runs < 1:
        raise ValueError(f"num_runs must be >= 1, got {num_runs}")
    start_time = time.perf_counter()
    if max_queries is None:
        max_queries = max_queries_for(benchmark, budget_seconds)
    chunk = max(1, min(int(chunk_size), int(num_runs)))
    run = batch_simulator(searcher, max_queries, fitness_fn)
    grid = np.linspace(0.0, float(budget_seconds), int(grid_points))
    budget = jnp.asarray(budget_seconds, jnp.float32)

    @jax.jit
    def gather(result):
        trajectory = best_on_grid(result.trace, grid)
        fields = (result.best_code, result.best_reward, result.best_valid, result.best_test)
        return fields + (result.num_queries, result.elapsed, trajectory, result.state)

    starts = range(0, int(num_runs), chunk)
    one_chunk = jax.eval_shape(lambda: gather(run(benchmark, run_keys(seed, chunk, 0), budget)))
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct((len(starts) * chunk, *x.shape[1:]), x.dtype), one_chunk)
    done = 0
    restored = resume(template) if resume is not None else None
    if restored is not None:
        done, buffers = restored[0], jax.tree.map(np.array, restored[1])  # writable host copies
    else:
        buffers = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), template)
    for k in tqdm(range(done, len(starts)), desc="runs", unit="chunk", disable=None if progress else True,
                  leave=False, initial=done, total=len(starts)):
        start = starts[k]
        piece = jax.device_get(gather(run(benchmark, run_keys(seed, chunk, start), budget)))
        jax.tree.map(lambda buffer, part: buffer.__setitem__(slice(start, start + chunk), part), buffers, piece)
        if on_chunk is not None:
            on_chunk(k + 1, buffers)
    stacked = jax.tree.map(lambda x: np.asarray(x)[:num_runs], buffers)
    best_code, best_reward, best_valid, best_test, num_queries, elapsed, trajectory, state = stacked
    return ManyRuns(
        best_code=best_code,
        best_reward=best_reward,
        best_valid=best_valid,
        best_test=best_test,
        num_queries=num_queries,
        elapsed=elapsed,
        grid=grid,
        trajectory=trajectory,
        state=state,
        seconds=time.perf_counter() - start_time,
    )


def summarize(runs: ManyRuns) -> dict:
    """The protocol's figures: mean and standard deviation (ddof 0) over runs.

    Returns:
      ``runs``, ``test_mean``, ``test_std``, ``valid_mean``, ``valid_std``,
      ``queries_mean`` and ``elapsed_mean`` as Python numbers.
    """
    return {
        "runs": int(runs.best_test.shape[0]),
        "test_mean": float(np.mean(runs.best_test)),
        "test_std": float(np.std(runs.best_test)),
        "valid_mean": float(np.mean(runs.best_valid)),
        "valid_std": float(np.std(runs.best_valid)),
        "queries_mean": float(np.mean(runs.num_queries)),
        "elapsed_mean": float(np.mean(runs.elapsed)),
    }
