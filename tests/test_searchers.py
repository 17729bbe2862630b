"""Discrete searchers: toy optima, aging, vmap == loop, no recompilation."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas.benchmarks import protocol
from jnas.search import discrete
from jnas.search.evolution import dominates, pareto_evolution, regularized_evolution
from jnas.search.local_search import local_search
from jnas.search.random_search import random_search
from jnas.search.reinforce import log_prob, reinforce
from jnas.spaces import nb201

TARGET = jnp.array([3, 1, 4, 0, 2, 3], jnp.int32)
OPPOSITE = (TARGET + 2) % nb201.NUM_OPS  # differs from TARGET on every edge


def matches(encoding, target=TARGET):
    """Toy fitness: how many edges carry the target's op (optimum 6, only at the target)."""
    return jnp.sum(encoding == target).astype(jnp.float32)


def search(searcher, fitness, key, num_queries):
    """Plain ask/tell loop as a scan; returns the final state and every (encoding, fitness)."""
    init_key, run_key = jax.random.split(key)

    def step(state, t):
        encoding = searcher.ask(jax.random.fold_in(run_key, t), state)
        value = fitness(encoding)
        return searcher.tell(state, encoding, value), (encoding, value)

    return jax.lax.scan(step, searcher.init(init_key), jnp.arange(num_queries))


@pytest.mark.parametrize(
    "name, searcher, num_queries",
    [
        ("rea", regularized_evolution(), 300),
        ("local", local_search(), 300),
        # the published rate (0.001) needs thousands of steps on this toy; the algorithm is the same
        ("reinforce", reinforce(learning_rate=0.1), 400),
    ],
)
def test_finds_toy_optimum(name, searcher, num_queries):
    state, (encodings, values) = jax.jit(lambda key: search(searcher, matches, key, num_queries))(jax.random.key(0))
    assert float(values.max()) == nb201.NUM_EDGES, name
    np.testing.assert_array_equal(np.asarray(encodings[int(jnp.argmax(values))]), np.asarray(TARGET))
    if name == "reinforce":  # the policy itself has learned the optimum, not just stumbled on it
        assert float(jnp.exp(log_prob(state.logits, TARGET))) > 0.5
        np.testing.assert_array_equal(np.asarray(jnp.argmax(state.logits, -1)), np.asarray(TARGET))


def test_random_search_finds_toy_optimum_and_is_uniform():
    # 1 cell in 15,625: 60,000 uniform draws miss it with probability e^-3.8
    _, (encodings, values) = jax.jit(lambda key: search(random_search(), matches, key, 60_000))(jax.random.key(1))
    assert float(values.max()) == nb201.NUM_EDGES
    frequencies = np.stack([np.bincount(np.asarray(encodings[:, e]), minlength=5) for e in range(6)]) / 60_000
    np.testing.assert_allclose(frequencies, 0.2, atol=0.01)


def test_reinforce_first_advantage_is_zero():
    """The baseline is updated before the loss, so the first step leaves the logits unchanged."""
    searcher = reinforce(learning_rate=0.5)
    tell = jax.jit(searcher.tell)
    state = searcher.init(jax.random.key(0))
    after = tell(state, TARGET, jnp.float32(80.0))
    np.testing.assert_array_equal(np.asarray(after.logits), np.asarray(state.logits))
    assert float(after.baseline_num / after.baseline_den) == pytest.approx(80.0)
    moved = tell(after, TARGET, jnp.float32(90.0))
    assert float(log_prob(moved.logits, TARGET)) > float(log_prob(after.logits, TARGET))


def test_aging_removes_the_oldest_not_the_worst():
    searcher = regularized_evolution(population_size=3, sample_size=2)
    tell = jax.jit(searcher.tell)
    state = searcher.init(jax.random.key(0))
    members = [jnp.full((6,), op, jnp.int32) for op in (0, 1, 2)]
    for encoding, value in zip(members, (10.0, 1.0, 2.0)):  # the oldest is the best
        state = tell(state, encoding, jnp.float32(value))
    child = jnp.full((6,), 3, jnp.int32)
    state = tell(state, child, jnp.float32(5.0))
    population = {tuple(np.asarray(row)) for row in state.population}
    assert tuple(np.asarray(members[0])) not in population  # the oldest (and fittest) died
    assert tuple(np.asarray(members[1])) in population  # the worst survives
    assert sorted(np.asarray(state.fitness).tolist()) == [1.0, 2.0, 5.0]
    assert sorted(np.asarray(state.birth).tolist()) == [1, 2, 3]
    # one more tell: now the member born at step 1 (fitness 1) is the oldest
    state = tell(state, jnp.full((6,), 4, jnp.int32), jnp.float32(0.0))
    assert sorted(np.asarray(state.fitness).tolist()) == [0.0, 2.0, 5.0]


def test_rea_first_queries_random_then_children_of_tournament_winner():
    searcher = regularized_evolution(population_size=3, sample_size=64)
    ask, tell = jax.jit(searcher.ask), jax.jit(searcher.tell)
    state = searcher.init(jax.random.key(0))
    # while the population fills, proposals are uniform cells, not mutants of empty slots
    fresh = np.stack([np.asarray(ask(jax.random.key(seed), state)) for seed in range(20)])
    assert len({tuple(row) for row in fresh}) >= 18 and np.mean(np.sum(fresh != 0, axis=1)) > 3
    members = [jnp.full((6,), op, jnp.int32) for op in (0, 1, 2)]
    for encoding, value in zip(members, (1.0, 7.0, 3.0)):
        state = tell(state, encoding, jnp.float32(value))
    for seed in range(5):  # 64 draws from 3 members include the best one (miss chance 1e-11)
        child = np.asarray(ask(jax.random.key(seed), state))
        assert np.sum(child != np.asarray(members[1])) == 1


def test_pareto_archive_is_the_front_of_everything_evaluated():
    searcher = pareto_evolution(num_objectives=2, population_size=10, sample_size=3, archive_size=64)

    def both(encoding):
        return jnp.stack([matches(encoding, TARGET), matches(encoding, OPPOSITE)])

    state, (encodings, values) = jax.jit(lambda key: search(searcher, both, key, 600))(jax.random.key(3))
    valid = np.asarray(state.archive_valid)
    front = np.asarray(state.archive_objectives)[valid]
    seen = np.asarray(values)
    assert not bool(state.archive_overflow)
    # nothing evaluated dominates an archive member, and archive members are mutually non-dominated
    assert not np.any(np.asarray(dominates(seen[:, None, :], front[None, :, :])))
    # every non-dominated evaluated point is represented in the archive
    dominated = np.asarray(dominates(seen[None, :, :], seen[:, None, :])).any(axis=1)
    assert {tuple(p) for p in seen[~dominated]} == {tuple(p) for p in front}
    # the archive's cells really have the archived objectives
    archived = np.asarray(state.archive)[valid]
    np.testing.assert_array_equal(np.asarray(jax.vmap(both)(jnp.asarray(archived))), front)
    # on this toy the true front is x + y = 6; the search reaches several points of it
    assert np.sum(front.sum(axis=1) == 6) >= 4


def test_local_search_restarts_at_a_local_optimum():
    searcher = local_search()
    ask, tell = jax.jit(searcher.ask), jax.jit(searcher.tell)
    state = searcher.init(jax.random.key(0))
    start = jnp.zeros((6,), jnp.int32)
    state = tell(state, start, jnp.float32(10.0))  # the restart query
    seen = set()
    for t in range(24):  # every neighbour is worse
        encoding = ask(jax.random.key(t), state)
        assert int(jnp.sum(encoding != start)) == 1
        seen.add(tuple(np.asarray(encoding)))
        state = tell(state, encoding, jnp.float32(0.0))
    assert len(seen) == 24  # no neighbour proposed twice
    assert not bool(state.has_current)  # stuck: the next ask is a random restart


def _synthetic_benchmark(seed=0):
    rng = np.random.default_rng(seed)
    return protocol.TabularBenchmark(
        reward=jnp.asarray(rng.uniform(10, 90, nb201.NUM_ARCHS), jnp.float32),
        cost=jnp.asarray(rng.uniform(30, 200, nb201.NUM_ARCHS), jnp.float32),
        valid=jnp.asarray(rng.uniform(10, 92, nb201.NUM_ARCHS), jnp.float32),
        test=jnp.asarray(rng.uniform(10, 95, nb201.NUM_ARCHS), jnp.float32),
        params=jnp.asarray(rng.uniform(0.1, 1.5, nb201.NUM_ARCHS), jnp.float32),
    )


# REA and REINFORCE carry the most state (ring buffer; Adam moments): the others compile
# the same way and are covered by the protocol and CLI tests.
@pytest.mark.parametrize("name", ["rea", "reinforce"])
def test_vmapped_runs_equal_sequential_runs_without_recompiling(name):
    chex.clear_trace_counter()  # chex counts traces per function name across tests
    searcher = discrete.make(name)
    benchmark = _synthetic_benchmark()
    keys = protocol.run_keys(7, 3)
    run = protocol.batch_simulator(searcher, max_queries=40)
    batched = run(benchmark, keys, 2000.0)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def one(key, budget):
        return protocol.simulate(searcher, benchmark, key, budget, max_queries=40)

    for i in range(3):  # three seeds, one trace
        single = one(keys[i], jnp.float32(2000.0))
        for field in ("best_code", "best_test", "num_queries", "elapsed"):
            np.testing.assert_array_equal(np.asarray(getattr(batched, field)[i]), np.asarray(getattr(single, field)))
        np.testing.assert_array_equal(np.asarray(batched.trace.code[i]), np.asarray(single.trace.code))
    assert len({tuple(np.asarray(batched.trace.code[i])) for i in range(3)}) == 3  # the seeds differ
    one(keys[0], jnp.float32(1500.0))  # another budget: still no retrace
    run(benchmark, protocol.run_keys(8, 3), 1500.0)  # other seeds and budget, batched
    assert run._cache_size() == 1


@pytest.mark.parametrize("name", ["rea", "reinforce", "random", "local"])
def test_ask_and_tell_trace_once(name):
    chex.clear_trace_counter()
    searcher = discrete.make(name)
    ask = jax.jit(chex.assert_max_traces(searcher.ask, n=1))
    tell = jax.jit(chex.assert_max_traces(searcher.tell, n=1))
    state = searcher.init(jax.random.key(0))
    for step in range(12):
        encoding = ask(jax.random.fold_in(jax.random.key(1), step), state)
        state = tell(state, encoding, matches(encoding))
    assert int(state.num_told) == 12


def test_make_rejects_unknown_names():
    with pytest.raises(KeyError, match="known searchers"):
        discrete.make("bayesopt")
