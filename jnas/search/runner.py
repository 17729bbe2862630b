"""Runs a differentiable search end to end: data, jitted steps, history, derived cell.

The CLI is a thin layer over :func:`run_search`; tests and experiments call it too.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnas import data as jdata
from jnas.search import darts
from jnas.spaces import nb201 as space
from jnas.supernet import nb201 as supernet

METHODS = ("darts",)
SPACES = ("nb201",)
# `jnas search` with no options: a short search that finishes in a couple of minutes
# on 2 CPU cores (measured in the README).
DEFAULT_EPOCHS = {"digits": 10}
PUBLISHED_EPOCHS = 50


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """What a search is: every field goes into ``result.json``'s ``config``."""

    space: str = "nb201"
    method: str = "darts"
    order: int = 1
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 64
    channels: int = 16
    cells: int = 5
    seed: int = 0
    limit: int | None = None

    def __post_init__(self):
        if self.space not in SPACES:
            raise ValueError(f"unknown search space {self.space!r}; known: {', '.join(SPACES)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown search method {self.method!r}; known: {', '.join(METHODS)}")
        if self.order not in (1, 2):
            raise ValueError(f"--order must be 1 or 2, got {self.order}")
        if self.dataset not in jdata.DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known: {', '.join(jdata.DATASETS)}")
        for name in ("epochs", "steps", "limit"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        for name in ("batch_size", "channels", "cells"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")

    def resolved_epochs(self) -> int:
        if self.epochs is not None:
            return self.epochs
        return DEFAULT_EPOCHS.get(self.dataset, PUBLISHED_EPOCHS)


def _mean(values):
    return float(np.mean(values)) if values else float("nan")


def run_search(config: SearchConfig, *, table=None, progress: bool = True, dataset=None) -> dict[str, Any]:
    """Runs the search described by ``config`` and returns the ``result.json`` payload.

    Args:
      config: the search.
      table: an optional :class:`jnas.benchmarks.nb201.NB201Table`; when given, every
        epoch's derived cell is looked up in it.
      progress: show a progress bar on stderr.
      dataset: an already loaded :class:`jnas.data.Dataset` (else loaded from ``config``).
    """
    start = time.perf_counter()
    if dataset is None:
        dataset = jdata.load_dataset(config.dataset, split="train", data_dir=config.data_dir, limit=config.limit)
    batches = jdata.BilevelBatches(dataset, config.batch_size, config.seed)
    epochs = config.resolved_epochs()
    total_steps = epochs * batches.steps_per_epoch
    if config.steps is not None:
        total_steps = config.steps
        epochs = math.ceil(total_steps / batches.steps_per_epoch)

    height, width, in_channels = dataset.image_shape
    net_config = supernet.SupernetConfig(
        channels=config.channels,
        cells=config.cells,
        num_classes=dataset.num_classes,
        in_channels=in_channels,
        image_size=height,
    )
    search = darts.make_darts(net_config, darts.DartsConfig(order=config.order), total_steps)
    state = search.init(jax.random.key(config.seed))
    step_fn = jax.jit(search.step, donate_argnums=0)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc=f"{config.method} search", unit="step", dynamic_ncols=True)

    history = []
    done = 0
    for epoch in range(epochs):
        sums: dict[str, list[float]] = {}
        epoch_start = time.perf_counter()
        for train_x, train_y, val_x, val_y in batches.epoch(epoch):
            if done >= total_steps:
                break
            state, metrics = step_fn(
                state,
                darts.Batch(jnp.asarray(train_x), jnp.asarray(train_y)),
                darts.Batch(jnp.asarray(val_x), jnp.asarray(val_y)),
            )
            metrics = jax.device_get(metrics)
            for name, value in metrics.items():
                sums.setdefault(name, []).append(float(value))
            done += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch, val_acc=f"{metrics['val_acc']:.3f}")
        weights = np.asarray(darts.arch_weights(state.arch_params))
        record = {
            "epoch": epoch,
            "steps": len(sums.get("train_loss", [])),
            "train_loss": _mean(sums.get("train_loss")),
            "train_acc": _mean(sums.get("train_acc")),
            "val_loss": _mean(sums.get("val_loss")),
            "val_acc": _mean(sums.get("val_acc")),
            "lr": _mean(sums.get("lr")),
            "arch_weights": weights.tolist(),
            "genotype": space.format_arch(space.derive(weights)),
            "seconds": time.perf_counter() - epoch_start,
        }
        if table is not None:
            record["nb201"] = table.lookup(record["genotype"])
        history.append(record)
    if bar is not None:
        bar.close()

    weights = np.asarray(darts.arch_weights(state.arch_params))
    result = {
        "genotype": space.format_arch(space.derive(weights)),
        "arch_weights": weights.tolist(),
        "ops": list(space.OPS),
        "history": history,
        "config": dataclasses.asdict(config) | {"epochs_run": epochs, "total_steps": total_steps},
        "dataset": {"name": dataset.name, "train_images": int(len(dataset.labels)), "image_shape": list(dataset.image_shape)},
        "supernet_params": supernet.count_params(state.params),
        "seconds": time.perf_counter() - start,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
    }
    if table is not None:
        lookup = table.lookup(result["genotype"])
        result["nb201"] = {k: lookup[k] for k in ("index", "c10_valid_acc_200", "c10_test_acc_200")}
    return result
