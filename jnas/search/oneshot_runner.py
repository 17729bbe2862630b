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

Checkpoints (:mod:`jnas.checkpoint`, with ``checkpoint_dir``): numbered by progress, so the
newest is always the furthest along.

* ``1..train_steps``, phase ``"train"``: every ``checkpoint_every`` SPOS steps and after the
  last, the whole :class:`~jnas.search.spos.SposState` (weights, optimizer state, path key,
  step) and the loop position (epoch, batch in the epoch, the partial logging window, the
  history so far).
* ``train_steps + 1 + k``, phase ``"search"``: the trained weights, the history, the
  Kendall result, and the queries of the first ``k`` chunks of ``chunk_runs`` runs
  (``k = 0`` right after Kendall).

A resumed run replays exactly the batches and path keys an uninterrupted one would and
reruns only what no checkpoint holds, so its result equals an uninterrupted run's except
for the ``seconds`` timings.

Devices (``devices``, :mod:`jnas.parallel`): Kendall's cells and the runs of every chunk
are split over the devices (:mod:`jnas.search.oneshot`); SPOS training stays on one
device (in every process alike). The device count is not part of the config:
checkpoints hold host arrays, so a run resumes on any device count.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jnas import checkpoint, parallel
from jnas import data as jdata
from jnas.search import discrete, oneshot, spos
from jnas.spaces import nb201
from jnas.supernet import nb201 as supernet

ALGORITHMS = ("rea", "reinforce", "random", "local")
TABLE_COLUMN = "c10_test_acc_200"
# a checkpoint of a small supernet costs ~0.1-0.3 s; a default SPOS step ~0.05-0.5 s
DEFAULT_CHECKPOINT_EVERY = 50


class OneShotInterrupted(Exception):
    """SIGINT stopped the run at ``where`` (e.g. ``"step 40 of 200"``); ``path`` is the
    checkpoint saved then."""

    def __init__(self, where: str, path):
        super().__init__(f"interrupted after {where}")
        self.where, self.path = where, path


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
    # runs searched per vmapped call, the unit of checkpointing the searches (None: all at
    # once); batched convolutions may round differently, so it is part of the config
    chunk_runs: int | None = None

    def __post_init__(self):
        if self.algo not in ALGORITHMS:
            raise ValueError(f"unknown searcher {self.algo!r}; known: {', '.join(ALGORITHMS)}")
        if self.dataset not in jdata.DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known: {', '.join(jdata.DATASETS)}")
        for name in ("channels", "cells", "batch_size", "train_steps", "queries", "runs", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("limit", "eval_images", "chunk_runs"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.eval_images is not None and self.eval_images < self.batch_size:
            raise ValueError(f"eval_images ({self.eval_images}) must be at least batch_size ({self.batch_size})")
        if not 2 <= self.kendall_cells <= nb201.NUM_ARCHS:
            raise ValueError(f"kendall_cells must lie in [2, {nb201.NUM_ARCHS}], got {self.kendall_cells}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")

    def check_devices(self, devices: int) -> None:
        """Raises ValueError unless every vmapped call's runs split evenly over ``devices``."""
        for name, value in (("runs", self.runs), ("chunk_runs", min(self.chunk_runs or self.runs, self.runs))):
            if value % devices:
                raise ValueError(f"{name} ({value}) must be a multiple of the {devices} devices that split the runs")


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


def train_supernet(config: OneShotConfig, *, progress: bool = True, dataset=None,
                   _checkpoints: "_RunCheckpoints | None" = None) -> TrainedSupernet:
    """Step 1: SPOS on the weight half; the other half (up to ``eval_images``) is held out.

    Raises:
      jnas.data.DataError: the data cannot be loaded or is too small for the batch size.
      OneShotInterrupted: SIGINT, with checkpoints (the state is saved first).
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
    ckpt = _checkpoints if _checkpoints is not None else _RunCheckpoints(config, None)
    fresh = []  # trainer.init compiles: only once a checkpoint's config has been accepted

    def initial_state():
        if not fresh:
            fresh.append(trainer.init(train_key))
        return fresh[0]

    restored = ckpt.restore(initial_state)
    seconds_before = 0.0 if restored is None else float(restored.meta["train_seconds"])
    if restored is not None and restored.meta["phase"] == "search":
        # trained already: its weights and history are in the checkpoint
        params, history = restored.arrays["params"], restored.meta["history"]
    else:
        state, loop = (initial_state(), None) if restored is None else (restored.arrays["spos"], restored.meta["loop"])

        def after_step(state, done, snapshot):
            stop = ckpt.interrupted
            if done % ckpt.every == 0 or done == config.train_steps or stop:
                path = ckpt.save(done, {"spos": state}, {
                    "phase": "train", "loop": snapshot(),
                    "train_seconds": seconds_before + time.perf_counter() - start,
                })
                if stop:
                    raise OneShotInterrupted(f"SPOS step {done} of {config.train_steps}", path)

        state, history = spos.train(trainer, state, batches, config.train_steps, progress=progress, loop=loop,
                                    after_step=after_step if ckpt.store is not None else None)
        params = state.params
    jax.block_until_ready(params)
    # held-out: the half of the split that SPOS never trained on, in evaluation batches
    # of the training batch size (BatchNorm uses batch statistics, as in training)
    held = batches.val_indices[: config.eval_images]
    image_batches, label_batches = spos.batch_eval_data(dataset.images[held], dataset.labels[held], config.batch_size)
    fitness_data = oneshot.SupernetFitnessData(params, jnp.asarray(image_batches), jnp.asarray(label_batches))
    return TrainedSupernet(net, params, history, fitness_data, dataset, int(len(batches.train_indices)),
                           seconds_before + time.perf_counter() - start)


def checkpoint_config(config: OneShotConfig, table) -> dict[str, Any]:
    """What a resumed run must share with the checkpoints it continues: ``config`` and the
    table columns the result reads (as a digest)."""
    columns = {name: np.asarray(table.columns[name]) for name in (TABLE_COLUMN, "c10_valid_acc_200")}
    digest = checkpoint.array_digest(columns | {"index": np.asarray(table.index)})
    return {"mode": "supernet", **dataclasses.asdict(config), "table_digest": digest}


class _RunCheckpoints:
    """The checkpoints of one weight-sharing run (none when ``directory`` is None), and
    SIGINT turned into a flag while it lasts."""

    def __init__(self, config: OneShotConfig, table, directory=None, every: int = DEFAULT_CHECKPOINT_EVERY,
                 keep: int = checkpoint.DEFAULT_KEEP, resume: bool = False):
        from jnas.search.runner import _InterruptFlag

        if int(every) < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {every}")
        self.config, self.every, self.resume = config, int(every), bool(resume)
        self.store = None
        if directory is not None:
            self.store = checkpoint.Checkpoints(directory, "evolve", checkpoint_config(config, table), keep=keep)
        self.restored = None
        self._restore_done = False
        self._interrupt = _InterruptFlag(enabled=self.store is not None)

    @property
    def interrupted(self) -> bool:
        return self._interrupt.flag

    def empty_runs(self) -> dict[str, np.ndarray]:
        """Every run's queries: rows of the runs not searched yet stay zero."""
        runs, queries = self.config.runs, self.config.queries
        return {"encodings": np.zeros((runs, queries, nb201.NUM_EDGES), np.int32),
                "fitness": np.zeros((runs, queries), np.float32)}

    def restore(self, initial_state):
        """The newest intact checkpoint (once per run), or None; ``initial_state()`` gives
        the template of its SPOS state (called only for a checkpoint of this config)."""
        if self.store is None or not self.resume or self._restore_done:
            return self.restored
        self._restore_done = True

        def like(meta):
            if meta["phase"] == "train":
                return {"spos": initial_state()}
            return {"params": initial_state().params, "runs": self.empty_runs()}

        self.restored = self.store.restore(like)
        if self.restored is not None:
            meta = self.restored.meta
            where = (f"SPOS step {meta['loop']['done']} of {self.config.train_steps}" if meta["phase"] == "train"
                     else f"supernet trained, {meta['runs_done']} of {self.config.runs} runs searched")
            print(f"jnas: resuming from {self.restored.path} ({where})", file=sys.stderr, flush=True)
        return self.restored

    def save(self, step: int, arrays, meta: dict):
        return None if self.store is None else self.store.save(step, arrays, meta)

    def close(self) -> None:
        self._interrupt.restore()
        if self.store is not None:
            self.store.close()


def measure_kendall(config: OneShotConfig, trained: TrainedSupernet, table, mesh: Mesh | None = None) -> dict[str, Any]:
    """Step 2: Kendall τ-b between supernet held-out accuracy and the table over
    ``config.kendall_cells`` distinct, uniformly drawn cells (one vmapped evaluation,
    the cells split over the devices of ``mesh`` if given)."""
    net, dataset, fitness_data = trained.net, trained.dataset, trained.fitness_data
    kendall_key = jax.random.split(jax.random.key(config.seed))[1]

    tick = time.perf_counter()
    codes = np.asarray(jax.random.choice(kendall_key, nb201.NUM_ARCHS, (config.kendall_cells,), replace=False))
    encodings = np.asarray(nb201.code_to_encoding(codes))
    if mesh is None:
        supernet_acc = 100.0 * np.asarray(
            spos.evaluate_population(
                trained.params, encodings,
                np.asarray(fitness_data.image_batches).reshape(-1, *dataset.image_shape),
                np.asarray(fitness_data.label_batches).reshape(-1),
                net, batch_size=config.batch_size, chunk_size=config.chunk_size,
            )
        )
    else:  # the same evaluation batches: fitness_data holds the held-out images in batches of batch_size
        fitness_fn = oneshot.supernet_fitness(net, config.chunk_size)
        supernet_acc = oneshot.population_fitness(fitness_fn, fitness_data, encodings, mesh)
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
                trained: TrainedSupernet | None = None, kendall: dict | None = None,
                checkpoint_dir=None, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
                keep: int = checkpoint.DEFAULT_KEEP, resume: bool = False,
                devices: str | int | None = None) -> dict[str, Any]:
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
      checkpoint_dir: where to save checkpoints (see the module docstring); None: none.
        With a directory, SIGINT saves a checkpoint and raises :class:`OneShotInterrupted`.
        Not with ``trained`` (whose training state is not at hand).
      checkpoint_every: save every N SPOS steps (and after the last, after Kendall, and
        after every chunk of ``config.chunk_runs`` runs).
      keep: keep the newest K checkpoints.
      resume: continue from the newest intact checkpoint in ``checkpoint_dir`` (a fresh
        start if there is none).
      devices: None: one device; ``"all"`` or N: split Kendall's cells and every chunk of
        runs over that many devices (:func:`jnas.parallel.make_mesh`); ``runs`` and
        ``chunk_runs`` must be multiples of N (checked before anything runs). Runs and
        Kendall scores equal one device's up to float rounding of batched convolutions.

    Returns:
      A JSON-ready dict: ``config``, ``dataset``, ``supernet``, ``history``, ``kendall``,
      ``per_run``, ``test_mean``/``test_std``, ``seconds``, ``devices``.

    Raises:
      jnas.data.DataError: the data cannot be loaded or is too small for the batch size.
      jnas.checkpoint.CheckpointError: resume from a different config or from damaged
        checkpoints only.
      OneShotInterrupted: SIGINT, with checkpoints.
    """
    start = time.perf_counter()
    if trained is not None and checkpoint_dir is not None:
        raise ValueError("checkpoint_dir needs a run that trains its own supernet (trained=None)")
    mesh = None if devices is None else parallel.make_mesh(devices)
    if mesh is not None:
        config.check_devices(mesh.devices.size)
    ckpt = _RunCheckpoints(config, table, checkpoint_dir, checkpoint_every, keep, resume)
    try:
        return _run(config, table, ckpt, start, progress=progress, dataset=dataset, trained=trained, kendall=kendall,
                    mesh=mesh)
    finally:
        ckpt.close()


def _run(config, table, ckpt: _RunCheckpoints, start: float, *, progress, dataset, trained, kendall, mesh):
    seconds_before = 0.0  # of earlier, interrupted processes, training excluded
    trained_here = trained is None
    if trained is None:
        trained = train_supernet(config, progress=progress, dataset=dataset, _checkpoints=ckpt)
    trained_at = time.perf_counter()
    net, dataset, fitness_data = trained.net, trained.dataset, trained.fitness_data
    held_out_images = int(fitness_data.label_batches.size)
    restored = ckpt.restored
    searched = restored is not None and restored.meta["phase"] == "search"
    runs_done, search_seconds = 0, 0.0
    buffers = ckpt.empty_runs()
    if searched:
        kendall = restored.meta["kendall"]
        runs_done, search_seconds = int(restored.meta["runs_done"]), float(restored.meta["search_seconds"])
        seconds_before = float(restored.meta["other_seconds"])
        buffers = {name: np.array(value) for name, value in jax.device_get(restored.arrays["runs"]).items()}
    if kendall is None:
        kendall = measure_kendall(config, trained, table, mesh)
    base_step = config.train_steps + 1  # checkpoint `base_step + k`: k chunks of runs searched

    def save(chunks_done):
        path = ckpt.save(base_step + chunks_done, {"params": trained.params, "runs": buffers}, {
            "phase": "search", "history": trained.history, "kendall": kendall, "runs_done": runs_done,
            "train_seconds": trained.seconds, "search_seconds": search_seconds,
            "other_seconds": seconds_before + time.perf_counter() - trained_at,
        })
        if ckpt.interrupted:
            raise OneShotInterrupted(f"{runs_done} of {config.runs} runs searched", path)

    chunk = min(config.chunk_runs or config.runs, config.runs)
    if not searched:
        save(0)
    searcher = discrete.make(config.algo)
    fitness_fn = oneshot.supernet_fitness(net, config.chunk_size)
    while runs_done < config.runs:
        tick = time.perf_counter()
        count = min(chunk, config.runs - runs_done)
        part = oneshot.run_searchers(searcher, fitness_fn, fitness_data, num_runs=count,
                                     num_queries=config.queries, seed=config.seed, start=runs_done,
                                     progress=progress, mesh=mesh)
        buffers["encodings"][runs_done:runs_done + count] = part.encodings
        buffers["fitness"][runs_done:runs_done + count] = part.fitness
        runs_done += count
        search_seconds += time.perf_counter() - tick
        save(-(-runs_done // chunk))

    encodings, fitness = buffers["encodings"], buffers["fitness"]
    best = np.argmax(fitness, axis=1)  # first on ties, as in oneshot.run_searchers
    rows = np.arange(config.runs)
    best_encoding, best_fitness = encodings[rows, best], fitness[rows, best]
    best_codes = np.asarray(nb201.encoding_to_code(best_encoding))
    test = np.asarray(table.columns[TABLE_COLUMN])[best_codes]
    valid = np.asarray(table.columns["c10_valid_acc_200"])[best_codes]
    per_run = [
        {
            "run": i,
            "arch": nb201.format_arch(best_encoding[i]),
            "index": int(table.index[code]),
            "supernet_acc": round(float(best_fitness[i]), 4),
            "c10_test_acc_200": round(float(test[i]), 4),
            "c10_valid_acc_200": round(float(valid[i]), 4),
            "distinct_cells": int(len(np.unique(nb201.encoding_to_code(encodings[i])))),
        }
        for i, code in enumerate(best_codes)
    ]
    # training is timed by train_supernet (over every process); the rest here
    total = trained.seconds + seconds_before + time.perf_counter() - trained_at
    if not trained_here:
        total += trained_at - start
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
        "supernet_acc_mean": round(float(np.mean(best_fitness)), 4),
        "table": str(getattr(table, "path", "")),
        "seconds": {
            "train": round(trained.seconds, 3),
            "kendall": kendall["seconds"],
            "search": round(search_seconds, 3),
            "total": round(total, 3),
        },
        "jax_version": jax.__version__,
        "devices": 1 if mesh is None else int(mesh.devices.size),
    }
