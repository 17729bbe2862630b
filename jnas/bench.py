"""Timing of one search step: what ``jnas bench step`` prints.

Measures, for the NAS-Bench-201 supernet at a given shape, the compile time of the
jitted step, the median wall time of a step after compilation, the process's peak
resident memory, and images per second (train plus validation images per step).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp

from jnas import host_memory, prng, xla_options
from jnas.search import darts
from jnas.supernet import nb201 as supernet


def machine_description() -> str:
    """CPU model and count, recorded next to every timing."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cpus, {platform.system()}"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class StepTimer:
    """The jitted DARTS search step, compiled, on fresh random batches: time it one step at a time.

    ``compile_s`` is trace + lower + compile (a load from JAX's persistent cache where
    ``JAX_COMPILATION_CACHE_DIR`` is set and holds the step: ``report`` records the
    directory); :meth:`step` runs one step (batch creation outside the timed region) and
    returns its wall time. Another process can interleave its own steps with these
    (``experiments/bench_step/compare.py`` does, so that both implementations see the same
    machine load).
    """

    def __init__(self, *, order: int = 1, batch_size: int = 64, channels: int = 16, cells: int = 5,
                 image_size: int = 32, in_channels: int = 3, num_classes: int = 10, scan_cells: bool = False,
                 seed: int = 0, hvp: str = "finite_difference"):
        net_config = supernet.SupernetConfig(
            channels=channels, cells=cells, num_classes=num_classes, in_channels=in_channels,
            image_size=image_size, scan_cells=scan_cells,
        )
        search = darts.make_darts(net_config, darts.DartsConfig(order=order, hvp=hvp), total_steps=1000)
        self.order, self.hvp = order, hvp
        self.config = {"batch_size": batch_size, "channels": channels, "cells": cells, "image_size": image_size,
                       "in_channels": in_channels, "num_classes": num_classes, "scan_cells": scan_cells}
        self._key = jax.random.key(seed)
        self._shape = (batch_size, image_size, image_size, in_channels)
        self._num_classes = num_classes
        self._state = search.init(self._key)
        t0 = time.perf_counter()
        self._compiled = xla_options.jit(search.step, donate_argnums=0).lower(
            self._state, self._batch(0), self._batch(1)).compile()
        self.compile_s = time.perf_counter() - t0
        self._metrics = None
        self._steps = 0

    def _batch(self, i):
        k = jax.random.fold_in(self._key, i)
        return darts.Batch(prng.normal(k, self._shape),
                           jax.random.randint(jax.random.fold_in(k, 1), (self._shape[0],), 0, self._num_classes))

    def step(self) -> float:
        """Runs one step; returns its seconds."""
        train, val = self._batch(2 * self._steps + 2), self._batch(2 * self._steps + 3)
        jax.block_until_ready((train, val))
        t = time.perf_counter()
        self._state, self._metrics = self._compiled(self._state, train, val)
        jax.block_until_ready((self._state, self._metrics))
        self._steps += 1
        return time.perf_counter() - t

    @property
    def loss_finite(self) -> bool:
        return self._metrics is not None and bool(jnp.isfinite(self._metrics["train_loss"]))

    def report(self, times: list[float]) -> dict:
        """What ``jnas bench step`` prints, for the step times ``times`` measured with :meth:`step`."""
        median = statistics.median(times)
        return {
            "impl": "jnas",
            "order": self.order,
            "hvp": self.hvp if self.order == 2 else None,
            "median_step_s": median,
            "min_step_s": min(times),
            "step_times_s": times,
            "compile_s": self.compile_s,
            "peak_rss_mb": peak_rss_mb(),
            "images_per_s": 2 * self.config["batch_size"] / median,
            "config": dict(self.config),
            "jax_version": jax.__version__,
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "machine": machine_description(),
            "loss_finite": self.loss_finite,
            "host_memory": host_memory.state(),
            # set (JAX_COMPILATION_CACHE_DIR): a repeated compile is a load, and compile_s says so
            "compilation_cache_dir": jax.config.jax_compilation_cache_dir or None,
        }


def bench_step(*, order: int = 1, batch_size: int = 64, channels: int = 16, cells: int = 5,
               image_size: int = 32, in_channels: int = 3, num_classes: int = 10,
               steps: int = 5, warmup: int = 1, scan_cells: bool = False, seed: int = 0,
               hvp: str = "finite_difference") -> dict:
    """Compiles and times the DARTS search step on random data of the given shape."""
    timer = StepTimer(order=order, batch_size=batch_size, channels=channels, cells=cells, image_size=image_size,
                      in_channels=in_channels, num_classes=num_classes, scan_cells=scan_cells, seed=seed, hvp=hvp)
    return timer.report([timer.step() for _ in range(warmup + steps)][warmup:])
