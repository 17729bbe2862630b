"""The weight-sharing mode of the discrete searchers, end to end.

1. Train the NAS-Bench-201 supernet with SPOS (:mod:`jnas.search.spos`) on the weight
   half of the training set (the first half of :class:`jnas.data.BilevelBatches`'
   split).
2. Score ``kendall_cells`` distinct, uniformly sampled cells on the other half
   (held-out) and correlate the scores with a table's ``c10_test_acc_200`` (Kendall τ-b).
3. Run ``runs`` independent searches of ``queries`` queries each, vmapped, with fitness
   = held-out supernet accuracy (:mod:`jnas.search.oneshot`), and report each run's
   best-fitness cell with its table accuracy.

The CLI (``jnas evolve --supernet``) and ``experiments/nb201_searchers/supernet_mode.py``
are thin layers over :func:`run_oneshot`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jnas import data as jdata
from jnas.search import discrete, oneshot, spos
from jnas.spaces import nb201
from jnas.supernet import nb201 as supernet

ALGORITHMS = ("rea", "reinforce", "random", "local")
TABLE_COLUMN = "c10_test_acc_200"


@dataclasses.dataclass(frozen=True)
class OneShotConfig:
    """Everything a weight-sharing search is; every field goes into ``result.json``."""

    algo: str = "rea"
    dataset: str = "digits"
    data_dir: str | None = None
    limit: int | None = None
    channels: int = 8
    cells: int = 1
    batch_size: int = 64
    train_steps: int = 200
    queries: int = 50
    runs: int = 10
    seed: int = 0
    kendall_cells: int = 200
    eval_images: int | None = None
    chunk_size: int = 16

    def __post_init__(self):
        if self.algo not in ALGORITHMS:
            raise ValueError(f"unknown searcher {self.algo!r}; known: {', '.join(ALGORITHMS)}")
        if self.dataset not in jdata.DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known: {', '.join(jdata.DATASETS)}")
        for name in ("channels", "cells", "batch_size", "train_steps", "queries", "runs", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("limit", "eval_images"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.eval_images is not None and self.eval_images < self.batch_size:
            raise ValueError(f"eval_images ({self.eval_images}) must be at least batch_size ({self.batch_size})")
        if not 2 <= self.kendall_cells <= nb201.NUM_ARCHS:
            raise ValueError(f"kendall_cells must lie in [2, {nb201.NUM_ARCHS}], got {self.kendall_cells}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")


def _round(values, digits=4):
    return [round(float(v), digits) for v in np.asarray(values).ravel()]


class TrainedSupernet(NamedTuple):
    """A SPOS-trained supernet and its held-out data (what every searcher run shares)."""

    net: supernet.SupernetConfig
    params: Any
    history: list
    fitness_data: oneshot.SupernetFitnessData
    dataset: Any
    train_images: int
    seconds: float


def train_supernet(config: OneShotConfig, *, progress: bool = True, dataset=None) -> TrainedSupernet:
    """Step 1: SPOS on the weight half; the other half (up to ``eval_images``) is held out.

    Raises:
      jnas.data.DataError: the data cannot be loaded or is too small for the batch size.
    """
    start = time.perf_counter()
    if dataset is None:
        dataset = jdata.load_dataset(config.dataset, split="train", data_dir=config.data_dir, limit=config.limit)
    batches = jdata.BilevelBatches(dataset, config.batch_size, config.seed)
    height, width, in_channels = dataset.image_shape
    net = supernet.SupernetConfig(
        channels=config.channels, cells=config.cells, num_classes=dataset.num_classes,
        in_channels=in_channels, image_size=height,
    )
    trainer = spos.make_spos(net, config.train_steps)
    train_key = jax.random.split(jax.random.key(config.seed))[0]
    state, history = spos.train(trainer, trainer.init(train_key), batches, config.train_steps, progress=progress)
    jax.block_until_ready(state.params)
    # held-out: the half of the split that SPOS never trained on, in evaluation batches
    # of the training batch size (BatchNorm uses batch statistics, as in training)
    held = batches.val_indices[: config.eval_images]
    image_batches, label_batches = spos.batch_eval_data(dataset.images[held], dataset.labels[held], config.batch_size)
    fitness_data = oneshot.SupernetFitnessData(state.params, jnp.asarray(image_batches), jnp.asarray(label_batches))
    return TrainedSupernet(net, state.params, history, fitness_data, dataset, int(len(batches.train_indices)),
                           time.perf_counter() - start)


def measure_kendall(config: OneShotConfig, trained: TrainedSupernet, table) -> dict[str, Any]:
    """Step 2: Kendall τ-b between supernet held-out accuracy and the table over
    ``config.kendall_cells`` distinct, uniformly drawn cells (one vmapped evaluation)."""
    net, dataset, fitness_data = trained.net, trained.dataset, trained.fitness_data
    kendall_key = jax.random.split(jax.random.key(config.seed))[1]

    tick = time.perf_counter()
    codes = np.asarray(jax.random.choice(kendall_key, nb201.NUM_ARCHS, (config.kendall_cells,), replace=False))
    encodings = np.asarray(nb201.code_to_encoding(codes))
    supernet_acc = 100.0 * np.asarray(
        spos.evaluate_population(
            trained.params, encodings,
            np.asarray(fitness_data.image_batches).reshape(-1, *dataset.image_shape),
            np.asarray(fitness_data.label_batches).reshape(-1),
            net, batch_size=config.batch_size, chunk_size=config.chunk_size,
        )
    )
    truth = np.asarray(table.columns[TABLE_COLUMN])[codes]
    tau = oneshot.kendall_tau(supernet_acc, truth)
    return {
        "tau_b": round(tau, 4),
        "cells": config.kendall_cells,
        "ground_truth": f"NAS-Bench-201 {TABLE_COLUMN} (CIFAR-10, 200 epochs)",
        "codes": [int(c) for c in codes],
        "supernet_acc": _round(supernet_acc),
        TABLE_COLUMN: _round(truth),
        "seconds": round(time.perf_counter() - tick, 3),
    }


def run_oneshot(config: OneShotConfig, table, *, progress: bool = True, dataset=None,
                trained: TrainedSupernet | None = None, kendall: dict | None = None) -> dict[str, Any]:
    """Trains the supernet (unless ``trained`` is given), measures its ranking and runs the searchers.

    Args:
      config: the run.
      table: a :class:`jnas.benchmarks.nb201.NB201Table` (or anything with ``columns``
        mapping ``c10_test_acc_200``/``c10_valid_acc_200`` to arrays ordered by code
        and ``index``): ground truth for Kendall τ and the reported accuracies.
      progress: tqdm bars on stderr.
      dataset: a preloaded :class:`jnas.data.Dataset` (else loaded from ``config``).
      trained: a supernet from :func:`train_supernet` with the same ``config`` (to
        run several searchers on one supernet); its training time is reported as is.
      kendall: the ``kendall`` entry of an earlier result on the same ``trained``
        (:func:`measure_kendall`), reused instead of scoring the cells again.

    Returns:
      A JSON-ready dict: ``config``, ``dataset``, ``supernet``, ``history``, ``kendall``,
      ``per_run``, ``test_mean``/``test_std``, ``seconds``.

    Raises:
      jnas.data.DataError: the data cannot be loaded or is too small for the batch size.
    """
    start = time.perf_counter()
    if trained is None:
        trained = train_supernet(config, progress=progress, dataset=dataset)
    net, dataset, fitness_data = trained.net, trained.dataset, trained.fitness_data
    held_out_images = int(fitness_data.label_batches.size)
    if kendall is None:
        kendall = measure_kendall(config, trained, table)
    tick = time.perf_counter()
    searcher = discrete.make(config.algo)
    runs = oneshot.run_searchers(
        searcher, oneshot.supernet_fitness(net, config.chunk_size), fitness_data,
        num_runs=config.runs, num_queries=config.queries, seed=config.seed, progress=progress,
    )
    search_seconds = time.perf_counter() - tick

    best_codes = np.asarray(nb201.encoding_to_code(runs.best_encoding))
    test = np.asarray(table.columns[TABLE_COLUMN])[best_codes]
    valid = np.asarray(table.columns["c10_valid_acc_200"])[best_codes]
    per_run = [
        {
            "run": i,
            "arch": nb201.format_arch(runs.best_encoding[i]),
            "index": int(table.index[code]),
            "supernet_acc": round(float(runs.best_fitness[i]), 4),
            "c10_test_acc_200": round(float(test[i]), 4),
            "c10_valid_acc_200": round(float(valid[i]), 4),
            "distinct_cells": int(len(np.unique(nb201.encoding_to_code(runs.encodings[i])))),
        }
        for i, code in enumerate(best_codes)
    ]
    return {
        "mode": "supernet",
        "algo": config.algo,
        "config": dataclasses.asdict(config),
        "dataset": {
            "name": dataset.name,
            "image_shape": list(dataset.image_shape),
            "train_images": trained.train_images,
            "held_out_images": held_out_images,
            "eval_batch_size": config.batch_size,
        },
        "supernet": {
            "params": supernet.count_params(trained.params),
            "training": "SPOS: one uniformly sampled cell per step (Guo et al., ECCV 2020)",
            "batch_norm": "batch statistics everywhere (no running statistics, so no recalibration)",
            "fitness": "held-out accuracy (%) of the cell with the shared weights",
        },
        "history": trained.history,
        "kendall": kendall,
        "per_run": per_run,
        "test_mean": round(float(np.mean(test)), 4),
        "test_std": round(float(np.std(test)), 4),
        "supernet_acc_mean": round(float(np.mean(runs.best_fitness)), 4),
        "table": str(getattr(table, "path", "")),
        "seconds": {
            "train": round(trained.seconds, 3),
            "kendall": kendall["seconds"],
            "search": round(search_seconds, 3),
            "total": round(trained.seconds + time.perf_counter() - start, 3),
        },
        "jax_version": jax.__version__,
    }
