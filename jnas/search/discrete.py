"""The interface shared by the discrete (black-box) searchers.

A discrete searcher is a factory that returns a :class:`DiscreteSearcher`, a
NamedTuple of three pure, jittable functions, in the manner of an optax
``GradientTransformation``::

    searcher = jnas.search.evolution.regularized_evolution()
    state = searcher.init(key)
    for step in range(num_queries):
        encoding = searcher.ask(jax.random.fold_in(key, step), state)
        state = searcher.tell(state, encoding, fitness(encoding))

All state lives in an explicit pytree of arrays with a fixed structure, so a whole
search is one ``jax.lax.scan`` and many independent searches are one ``jax.vmap``
over keys (``jnas.benchmarks.protocol`` does both). Fitness is *maximised*.

One ``ask`` proposes one architecture (an int32 encoding of shape ``(6,)`` for
NAS-Bench-201): the searchers here are steady-state, as in the NAS-Bench-201
reference implementations, and a simulated-time budget charges queries one at a
time, so a batch would only blur where the budget ends.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jnas.spaces import nb201

SearchState = Any  # a pytree of arrays with a fixed structure

InitFn = Callable[[jax.Array], SearchState]
AskFn = Callable[[jax.Array, SearchState], jax.Array]
TellFn = Callable[[SearchState, jax.Array, jax.Array], SearchState]


class DiscreteSearcher(NamedTuple):
    """A discrete search strategy as three pure functions.

    Attributes:
      init: ``init(key) -> state``; the key seeds whatever the initial state draws
        (e.g. REINFORCE's initial logits).
      ask: ``ask(key, state) -> encoding``: the next architecture to evaluate, int32
        of shape ``(6,)``. Never changes the state; calling it twice with the same
        key gives the same proposal.
      tell: ``tell(state, encoding, fitness) -> state``: records the fitness of the
        architecture that ``ask`` proposed. ``fitness`` is a float scalar (larger
        is better), or for multi-objective searchers a vector of objectives, each
        to be maximised.
    """

    init: InitFn
    ask: AskFn
    tell: TellFn


def tree_select(pred: jax.Array, on_true: SearchState, on_false: SearchState) -> SearchState:
    """``on_true`` where the scalar ``pred`` holds, else ``on_false``, leaf by leaf.

    Used to make a ``tell`` a no-op for queries that a protocol does not count,
    without Python control flow (so it traces once).
    """
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def replay(encodings) -> DiscreteSearcher:
    """A searcher that proposes a fixed sequence of encodings, in order.

    Not a search strategy: a test double for protocol accounting, and a way to
    charge a hand-picked list of architectures under the same budget rules. After
    the sequence is exhausted it repeats the last encoding.

    Args:
      encodings: int array of shape ``(n, 6)``.

    Returns:
      A :class:`DiscreteSearcher` whose state is the number of ``tell`` calls.
    """
    encodings = jnp.asarray(encodings, jnp.int32)
    if encodings.ndim != 2 or encodings.shape[1] != nb201.NUM_EDGES or encodings.shape[0] == 0:
        raise ValueError(f"replay needs encodings of shape (n, {nb201.NUM_EDGES}), got {encodings.shape}")
    last = encodings.shape[0] - 1

    def init(key):
        del key
        return jnp.zeros((), jnp.int32)

    def ask(key, state):
        del key
        return encodings[jnp.minimum(state, last)]

    def tell(state, encoding, fitness):
        del encoding, fitness
        return state + 1

    return DiscreteSearcher(init, ask, tell)


# name -> (module, factory) of the strategies; imported lazily because those modules
# import this one
_REGISTRY = {
    "rea": ("jnas.search.evolution", "regularized_evolution"),
    "reinforce": ("jnas.search.reinforce", "reinforce"),
    "random": ("jnas.search.random_search", "random_search"),
    "local": ("jnas.search.local_search", "local_search"),
    "pareto": ("jnas.search.evolution", "pareto_evolution"),
}
NAMES: tuple[str, ...] = tuple(_REGISTRY)


def make(name: str, **hyperparameters) -> DiscreteSearcher:
    """The searcher registered as ``name`` (one of :data:`NAMES`), built with ``hyperparameters``.

    Raises:
      KeyError: an unknown name; the message lists the known ones.
    """
    import importlib

    if name not in _REGISTRY:
        raise KeyError(f"unknown searcher {name!r}; known searchers: {', '.join(NAMES)}")
    module, factory = _REGISTRY[name]
    return getattr(importlib.import_module(module), factory)(**hyperparameters)


def run_keys(seed: int, num_runs: int, start: int = 0) -> jax.Array:
    """Per-run keys ``fold_in(key(seed), i)`` for runs ``start .. start + num_runs - 1``.

    Run ``i`` gets the same key however the runs are batched.
    """
    base = jax.random.key(int(seed))
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(start, start + num_runs, dtype=jnp.uint32))
