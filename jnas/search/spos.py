"""One-shot supernet training by uniform single-path sampling (SPOS), and its evaluator.

Single Path One-Shot (Guo et al., ECCV 2020) decouples weight training from the
search: the supernet's shared weights are trained with ONE uniformly sampled path
per step (here a uniformly random NAS-Bench-201 cell, entered as its one-hot
``arch_weights``, so only that cell's ops receive gradient), and afterwards any
cell is scored by running the trained supernet with its one-hot code, without
further training. A discrete searcher then uses that score as its fitness
(:mod:`jnas.search.oneshot`).

BatchNorm: every BatchNorm of the jnas supernet normalises with the statistics of
the batch at hand and never keeps running averages (see :mod:`jnas.supernet.nb201`).
SPOS recalibrates running statistics per candidate before evaluating it; here there
are none to recalibrate, so each candidate is evaluated with its own batch
statistics. Consequently a score depends on the evaluation batch size (``eval
batch`` below), which is therefore part of the evaluator's definition.

Usage::

    trainer = spos.make_spos(net_config, total_steps)
    state = trainer.init(key)
    for train_x, train_y, *_ in batches:
        state, metrics = trainer.step(state, spos.Batch(train_x, train_y))
    accuracies = spos.evaluate_population(state.params, encodings, images, labels, net_config)

References:
  Guo, Zhang, Mu, Heng, Liu, Wei & Sun, "Single Path One-Shot Neural Architecture
  Search with Uniform Sampling", ECCV 2020.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jnas.search.darts import Batch, DartsConfig, accuracy, cross_entropy, weight_optimizer
from jnas.spaces import nb201
from jnas.supernet import nb201 as supernet

__all__ = [
    "Batch",
    "SposState",
    "SposTrainer",
    "make_spos",
    "population_accuracy",
    "evaluate_population",
]


class SposState(NamedTuple):
    """Everything SPOS training carries from step to step (a pytree of arrays).

    Attributes:
      params: the supernet's shared weights.
      opt_state: the weight optimizer's state.
      key: typed PRNG key; step ``t`` samples its path from ``fold_in(key, t)``.
      step: int32 scalar, steps taken.
    """

    params: Any
    opt_state: Any
    key: jax.Array
    step: jax.Array


class SposTrainer(NamedTuple):
    """SPOS training as pure functions.

    Attributes:
      init: ``init(key) -> SposState``; the key is split into the weight-init key
        and the path-sampling key.
      step: ``step(state, batch) -> (state, metrics)``, jitted; ``metrics`` holds the
        ``loss`` and ``accuracy`` of the sampled path on the batch (before the
        update) and the sampled ``encoding`` ``(6,)``.
      tx: the weight optimizer.
      lr_schedule: its learning rate per step.
    """

    init: Callable
    step: Callable
    tx: optax.GradientTransformation
    lr_schedule: Callable


def make_spos(
    net_config: supernet.SupernetConfig,
    total_steps: int,
    optimizer_config: DartsConfig | None = None,
) -> SposTrainer:
    """Builds SPOS weight training for the NAS-Bench-201 supernet.

    Args:
      net_config: the supernet's shape.
      total_steps: length of the cosine learning-rate schedule.
      optimizer_config: the weight optimizer's settings (learning rate, momentum,
        Nesterov, weight decay, gradient clipping), as for DARTS' weights; the
        architecture fields are unused. Default ``DartsConfig()``.

    Returns:
      A :class:`SposTrainer`. Each step samples a uniformly random cell (all
      ``5**6`` encodings equally likely, ``none`` included, as in uniform sampling
      over the NAS-Bench-201 space) and takes one optimizer step on the loss of that
      single path.
    """
    optimizer_config = optimizer_config or DartsConfig()
    tx, schedule = weight_optimizer(optimizer_config, total_steps)

    def loss_fn(params, arch_weights, batch):
        logits = supernet.apply(params, batch.images, arch_weights, net_config)
        return cross_entropy(logits, batch.labels), accuracy(logits, batch.labels)

    def init(key):
        init_key, path_key = jax.random.split(key)
        params = supernet.init(init_key, net_config)
        return SposState(params, tx.init(params), path_key, jnp.zeros((), jnp.int32))

    @jax.jit
    def step(state: SposState, batch: Batch):
        encoding = nb201.sample(jax.random.fold_in(state.key, state.step))
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, nb201.one_hot(encoding), batch
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "accuracy": acc, "encoding": encoding}
        return SposState(params, opt_state, state.key, state.step + 1), metrics

    return SposTrainer(init, step, tx, schedule)


def population_accuracy(params, encodings, image_batches, label_batches, config: supernet.SupernetConfig,
                        chunk_size: int | None = None):
    """Accuracy of many cells with shared weights; traceable (jit/vmap it, or use
    :func:`evaluate_population`).

    Args:
      params: supernet weights.
      encodings: ``(P, 6)`` int cells.
      image_batches: ``(NB, B, H, W, C)``: the evaluation data in ``NB`` batches of
        ``B``. BatchNorm uses each batch's statistics, per cell.
      label_batches: ``(NB, B)`` int labels.
      config: the supernet's shape (static).
      chunk_size: cells evaluated together per vmapped call (bounds memory: the
        activations of ``chunk_size * B`` images live at once); default ``P``.
        Cells are padded to a multiple of it, so the result does not depend on it
        beyond float rounding.

    Returns:
      ``(P,)`` float32 accuracies in ``[0, 1]`` over the ``NB * B`` images.
    """
    encodings = jnp.asarray(encodings, jnp.int32)
    num_cells = encodings.shape[0]
    chunk = num_cells if chunk_size is None else max(1, min(int(chunk_size), num_cells))
    num_chunks = -(-num_cells // chunk)
    padded = jnp.concatenate(
        [encodings, jnp.broadcast_to(encodings[-1:], (num_chunks * chunk - num_cells, nb201.NUM_EDGES))]
    )
    arch_weights = nb201.one_hot(padded).reshape(num_chunks, chunk, nb201.NUM_EDGES, nb201.NUM_OPS)

    def chunk_correct(weights):  # (chunk, 6, 5) -> (chunk,) correct counts
        def batch_correct(carry, batch):
            images, labels = batch
            logits = jax.vmap(lambda w: supernet.apply(params, images, w, config))(weights)
            return carry + jnp.sum(jnp.argmax(logits, axis=-1) == labels, axis=-1, dtype=jnp.int32), None

        total, _ = jax.lax.scan(batch_correct, jnp.zeros((chunk,), jnp.int32), (image_batches, label_batches))
        return total

    correct = jax.lax.map(chunk_correct, arch_weights).reshape(-1)[:num_cells]
    return correct.astype(jnp.float32) / (image_batches.shape[0] * image_batches.shape[1])


_population_accuracy_jit = jax.jit(population_accuracy, static_argnames=("config", "chunk_size"))


def batch_eval_data(images, labels, batch_size: int | None = None):
    """Splits evaluation data into ``(NB, B, ...)`` batches, dropping the remainder.

    Args:
      images: ``(N, H, W, C)``.
      labels: ``(N,)``.
      batch_size: ``B``; default ``N`` (one batch).

    Raises:
      ValueError: no images, or fewer than ``batch_size``.
    """
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
    n = images.shape[0]
    if n == 0 or labels.shape != (n,):
        raise ValueError(f"need N >= 1 images with N labels, got images {images.shape} and labels {labels.shape}")
    batch_size = n if batch_size is None else int(batch_size)
    if not 1 <= batch_size <= n:
        raise ValueError(f"evaluation batch size must lie in [1, {n}], got {batch_size}")
    num_batches = n // batch_size
    used = num_batches * batch_size
    return (
        images[:used].reshape(num_batches, batch_size, *images.shape[1:]),
        labels[:used].reshape(num_batches, batch_size),
    )


def evaluate_population(params, encodings, images, labels, config: supernet.SupernetConfig,
                        batch_size: int | None = None, chunk_size: int | None = 64) -> jax.Array:
    """Held-out accuracy of every cell of ``encodings`` under the shared weights.

    ONE jitted call: the cells are vmapped (``chunk_size`` at a time inside the
    call via ``lax.map``), the images scanned ``batch_size`` at a time; no Python
    loop over architectures. BatchNorm uses the batch statistics of each cell on
    each evaluation batch (jnas keeps no running statistics, so SPOS's
    recalibration step has nothing to do), so the result depends on ``batch_size``.

    Args:
      params: supernet weights (e.g. ``SposState.params``).
      encodings: ``(P, 6)`` int cells, or one ``(6,)`` cell.
      images: ``(N, H, W, C)`` float32 held-out images.
      labels: ``(N,)`` int labels.
      config: the supernet's shape.
      batch_size: evaluation batch; the last ``N % batch_size`` images are dropped.
        Default ``N``.
      chunk_size: cells per vmapped evaluation (memory bound); default 64.

    Returns:
      ``(P,)`` float32 accuracies in ``[0, 1]`` (a scalar for one cell).
    """
    encodings = jnp.asarray(encodings, jnp.int32)
    single = encodings.ndim == 1
    if single:
        encodings = encodings[None]
    if encodings.ndim != 2 or encodings.shape[1] != nb201.NUM_EDGES or encodings.shape[0] == 0:
        raise ValueError(f"encodings must have shape (P, {nb201.NUM_EDGES}), got {encodings.shape}")
    image_batches, label_batches = batch_eval_data(images, labels, batch_size)
    acc = _population_accuracy_jit(
        params, encodings, jnp.asarray(image_batches), jnp.asarray(label_batches), config,
        None if chunk_size is None else int(chunk_size),
    )
    return acc[0] if single else acc


def train(trainer: SposTrainer, state: SposState, batches, num_steps: int, log_every: int | None = None,
          progress: bool = False, *, loop: dict | None = None,
          after_step: Callable[[SposState, int, Callable[[], dict]], None] | None = None,
          ) -> tuple[SposState, list[dict]]:
    """Runs ``num_steps`` SPOS steps on the weight half of ``batches``.

    Args:
      trainer: from :func:`make_spos`.
      state: from ``trainer.init``, or the state an interrupted call had reached.
      batches: a :class:`jnas.data.BilevelBatches` (or anything with ``epoch(e)``
        yielding ``(train_x, train_y, ...)``, and ``epoch(e, start_step)`` to resume
        mid-epoch); epochs follow one another until ``num_steps`` steps are done. Only
        the train half is used.
      num_steps: steps to take in all (those of ``loop`` included).
      log_every: steps per history row (default ``max(1, num_steps // 20)``).
      progress: a tqdm bar on stderr (when stderr is a terminal).
      loop: where an interrupted call stopped, as given by the ``snapshot`` of its
        ``after_step`` (with ``state`` the state it had then): the call continues with
        exactly the batches, path keys (``state.step``) and history window an
        uninterrupted one would use, so it ends with the same state and history.
      after_step: ``after_step(state, done, snapshot)`` after every step (``done``
        steps taken in all); ``snapshot()`` returns the loop position as JSON-ready
        dict ``{"done", "epoch", "position", "window", "history"}`` for ``loop``. It
        may raise to stop training (e.g. after saving a checkpoint on SIGINT).

    Returns:
      The final state and the history: rows ``{"step", "loss", "accuracy", "lr"}``,
      loss and accuracy averaged over the row's steps (each on its own sampled path).
    """
    from tqdm.auto import tqdm

    num_steps = int(num_steps)
    log_every = max(1, num_steps // 20) if log_every is None else max(1, int(log_every))
    loop = loop or {}
    done, epoch, position = int(loop.get("done", 0)), int(loop.get("epoch", 0)), int(loop.get("position", 0))
    history = [dict(row) for row in loop.get("history", [])]
    # float32 as the step returned them (JSON holds float32 values exactly as float64),
    # so a row's mean is computed over the same float32 values as without the pause
    window = [(np.float32(loss), np.float32(acc)) for loss, acc in loop.get("window", [])]

    def snapshot() -> dict:
        return {
            "done": done,
            "epoch": epoch,
            "position": position,
            "window": [[float(loss), float(acc)] for loss, acc in jax.device_get(window)],
            "history": [dict(row) for row in history],
        }

    bar = tqdm(total=num_steps, initial=done, desc="SPOS supernet", unit="step",
               disable=None if progress else True, dynamic_ncols=True, leave=False)
    try:
        while done < num_steps:
            for batch in batches.epoch(epoch, position) if position else batches.epoch(epoch):
                if done >= num_steps:
                    break
                state, metrics = trainer.step(state, Batch(jnp.asarray(batch[0]), jnp.asarray(batch[1])))
                window.append((metrics["loss"], metrics["accuracy"]))
                done += 1
                position += 1
                bar.update(1)
                if len(window) == log_every or done == num_steps:
                    losses, accs = np.asarray(jax.device_get(window), np.float32).T
                    history.append({
                        "step": done,
                        "loss": round(float(losses.mean()), 5),
                        "accuracy": round(float(accs.mean()), 5),
                        "lr": float(trainer.lr_schedule(done - 1)),
                    })
                    bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", acc=f"{history[-1]['accuracy']:.3f}")
                    window = []
                if after_step is not None:
                    after_step(state, done, snapshot)
            else:
                epoch, position = epoch + 1, 0
    finally:
        bar.close()
    return state, history
