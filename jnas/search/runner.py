"""Runs a differentiable search end to end: data, jitted steps, history, derived cell.

The CLI is a thin layer over :func:`run_search`; tests and experiments call it too.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnas import checkpoint
from jnas import data as jdata
from jnas import diagnostics, parallel, xla_options
from jnas.search import darts, networks
from jnas.supernet import nb201 as supernet

METHODS = ("darts", "pcdarts", "beta-darts")
SPACES = networks.SPACES
# Published defaults of the methods' own options (see jnas.search.darts).
PCDARTS_K = 4
PCDARTS_ARCH_LR = 6e-4
PCDARTS_WARMUP_FRACTION = 15 / 50  # α frozen for the first 15 of 50 epochs
BETA_DECAY_LAMBDA = 50.0
# `jnas search` with no options: a short search that finishes in a couple of minutes
# on 2 CPU cores (measured in the README).
DEFAULT_EPOCHS = {"digits": 10}
PUBLISHED_EPOCHS = 50
# a checkpoint costs ~0.1 s (a tiny supernet's state); a default search step ~0.1-1 s
DEFAULT_CHECKPOINT_EVERY = 50
NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteError(RuntimeError):
    """A NaN or Inf loss or gradient stopped the search (the message names the step)."""


class SearchInterrupted(Exception):
    """SIGINT stopped the search after ``step`` steps; ``path`` is the checkpoint saved then."""

    def __init__(self, step: int, path):
        super().__init__(f"interrupted after step {step}")
        self.step, self.path = step, path


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """What a search is: every field goes into ``result.json``'s ``config``."""

    space: str = "nb201"
    method: str = "darts"
    order: int = 1
    hvp: str = "finite_difference"  # order 2: "finite_difference" (DARTS Eq. 8) or "exact"
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 64
    channels: int = 16
    cells: int | None = None  # default: 5 per stage (nb201), 8 in all (darts spaces)
    seed: int = 0
    limit: int | None = None
    # method options; None means the method's published default
    partial_channels: int | None = None
    edge_normalization: bool | None = None
    arch_warmup_epochs: int | None = None
    arch_lr: float | None = None
    beta_decay: float | None = None
    # diagnostics: the Hessian's dominant eigenvalue every N epochs (0: off; it costs
    # about 2 * hessian_iters forward-backward passes per evaluated batch)
    hessian_every: int = 0
    hessian_batches: int = 2
    hessian_iters: int = 20

    def __post_init__(self):
        if self.space not in SPACES:
            raise ValueError(f"unknown search space {self.space!r}; known: {', '.join(SPACES)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown search method {self.method!r}; known: {', '.join(METHODS)}")
        if self.order not in (1, 2):
            raise ValueError(f"--order must be 1 or 2, got {self.order}")
        if self.hvp not in darts.HVP_MODES:
            raise ValueError(f"--hvp must be one of {', '.join(darts.HVP_MODES)}, got {self.hvp!r}")
        if self.dataset not in jdata.DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known: {', '.join(jdata.DATASETS)}")
        for name in ("epochs", "steps", "limit"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        for name in ("batch_size", "channels", "cells"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if self.partial_channels is not None:
            if self.partial_channels <= 0 or self.channels % self.partial_channels:
                raise ValueError(f"--partial-channels must divide --channels={self.channels}, "
                                 f"got {self.partial_channels}")
            if self.method != "pcdarts" and self.partial_channels != 1:
                raise ValueError("--partial-channels is a PC-DARTS option (use --method pcdarts)")
        elif self.method == "pcdarts" and self.channels % PCDARTS_K:
            raise ValueError(f"PC-DARTS's K={PCDARTS_K} must divide --channels={self.channels}; "
                             "set --partial-channels")
        if self.edge_normalization and self.method != "pcdarts":
            raise ValueError("--edge-normalization is a PC-DARTS option (use --method pcdarts)")
        if self.arch_warmup_epochs is not None and self.arch_warmup_epochs < 0:
            raise ValueError(f"--arch-warmup-epochs must be >= 0, got {self.arch_warmup_epochs}")
        if self.arch_lr is not None and not self.arch_lr > 0:
            raise ValueError(f"--arch-lr must be positive, got {self.arch_lr}")
        if self.beta_decay is not None and not self.beta_decay >= 0:
            raise ValueError(f"--beta-decay must be >= 0, got {self.beta_decay}")
        for name in ("hessian_every",):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("hessian_batches", "hessian_iters"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def method_options(self, epochs: int) -> dict[str, Any]:
        """The method's options with published defaults filled in (recorded in result.json)."""
        pc = self.method == "pcdarts"
        warmup = self.arch_warmup_epochs
        if warmup is None:
            warmup = round(PCDARTS_WARMUP_FRACTION * epochs) if pc else 0
        beta = self.beta_decay
        if beta is None:
            beta = BETA_DECAY_LAMBDA if self.method == "beta-darts" else 0.0
        return {
            "partial_channels": self.partial_channels or (PCDARTS_K if pc else 1),
            "edge_normalization": pc if self.edge_normalization is None else bool(self.edge_normalization),
            "arch_warmup_epochs": warmup,
            "arch_lr": self.arch_lr or (PCDARTS_ARCH_LR if pc else darts.DartsConfig.arch_lr),
            "beta_decay": float(beta),
        }

    def resolved_cells(self) -> int:
        return self.cells if self.cells is not None else networks.DEFAULT_CELLS[self.space]

    def resolved_epochs(self) -> int:
        if self.epochs is not None:
            return self.epochs
        return DEFAULT_EPOCHS.get(self.dataset, PUBLISHED_EPOCHS)


def _mean(values):
    return float(np.mean(values)) if values else float("nan")


def run_search(config: SearchConfig, *, table=None, progress: bool = True, dataset=None,
               checkpoint_dir=None, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
               keep: int = checkpoint.DEFAULT_KEEP, resume: bool = False,
               on_nonfinite: str = "stop", devices: str | int | None = None) -> dict[str, Any]:
    """Runs the search described by ``config`` and returns the ``result.json`` payload.

    Args:
      config: the search.
      table: an optional :class:`jnas.benchmarks.nb201.NB201Table`; when given, every
        epoch's derived cell is looked up in it.
      progress: show a progress bar on stderr.
      dataset: an already loaded :class:`jnas.data.Dataset` (else loaded from ``config``).
      checkpoint_dir: where to save checkpoints (:mod:`jnas.checkpoint`); None: none.
        With a directory, SIGINT saves a checkpoint and raises :class:`SearchInterrupted`.
      checkpoint_every: save every N steps (and always after the last one).
      keep: keep the newest K checkpoints.
      resume: continue from the newest intact checkpoint in ``checkpoint_dir`` (a fresh
        start if there is none). The result is bit-identical to an uninterrupted run's
        except for the ``seconds`` timings.
      on_nonfinite: ``"stop"``: a NaN/Inf loss or gradient raises :class:`NonFiniteError`
        naming the step, after saving the last finite state; ``"skip"``: that batch's
        update is dropped and counted in the epoch's ``nonfinite_skipped``.

      devices: None: one device (plain ``jax.jit``); ``"all"`` or N: data-parallel over a
        mesh of that many devices (:mod:`jnas.parallel`): each global batch is split over
        them (``batch_size`` must be a multiple of N), weights and α stay replicated and
        XLA all-reduces the gradients; BatchNorm sees the global batch, so results equal
        one device's up to float32 reduction order. Not part of the config: a checkpoint
        resumes on any device count.

    Raises:
      NonFiniteError, SearchInterrupted, jnas.checkpoint.CheckpointError (resume from a
      different config or from damaged checkpoints only), jnas.data.DataError.
    """
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"on_nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {on_nonfinite!r}")
    if int(checkpoint_every) < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    start = time.perf_counter()
    checkpoints = None
    if checkpoint_dir is not None:
        checkpoints = checkpoint.Checkpoints(checkpoint_dir, "search", dataclasses.asdict(config), keep=keep)
    if table is not None and config.space not in networks.NB201_SPACES:
        raise ValueError(f"a NAS-Bench-201 table does not apply to --space {config.space}")
    if dataset is None:
        dataset = jdata.load_dataset(config.dataset, split="train", data_dir=config.data_dir, limit=config.limit)
    batches = jdata.BilevelBatches(dataset, config.batch_size, config.seed)
    mesh = None if devices is None else parallel.make_mesh(devices)
    if mesh is not None and config.batch_size % mesh.devices.size:
        raise ValueError(f"--batch-size {config.batch_size} is not a multiple of the {mesh.devices.size} devices")
    epochs = config.resolved_epochs()
    total_steps = epochs * batches.steps_per_epoch
    if config.steps is not None:
        total_steps = config.steps
        epochs = math.ceil(total_steps / batches.steps_per_epoch)

    options = config.method_options(epochs)
    network, edge_softmax = networks.build_network(
        config.space, channels=config.channels, cells=config.resolved_cells(), image_shape=dataset.image_shape,
        num_classes=dataset.num_classes, partial_channels=options["partial_channels"],
        edge_normalization=options["edge_normalization"],
    )
    darts_config = darts.DartsConfig(
        order=config.order,
        hvp=config.hvp,
        arch_lr=options["arch_lr"],
        arch_warmup_steps=options["arch_warmup_epochs"] * batches.steps_per_epoch,
        beta_decay=options["beta_decay"],
    )
    search = darts.make_darts(network, darts_config, total_steps, steps_per_epoch=batches.steps_per_epoch)
    state = search.init(jax.random.key(config.seed))
    if mesh is None:
        step_fn = xla_options.jit(_guarded(search.step), donate_argnums=0)
    else:
        step_fn = parallel.data_parallel_step(_guarded(search.step), mesh, donate_state=True)
    hessian_fn = _hessian_probe(search, config, batches) if config.hessian_every else None

    # The loop's position: the state after `done` steps, at batch `position` of `epoch`,
    # with that epoch's metric sums so far. All of it is in every checkpoint, so a resumed
    # run replays exactly the batches and sums an uninterrupted one would.
    loop = {"done": 0, "epoch": 0, "position": 0, "sums": {}, "skipped": 0, "history": [], "seconds": 0.0}
    if resume and checkpoints is not None:
        restored = checkpoints.restore(state)
        if restored is not None:
            state, loop = restored.arrays, restored.meta
            print(f"jnas: resuming from {restored.path} (step {loop['done']} of {total_steps})",
                  file=sys.stderr, flush=True)
    history = loop["history"]
    if mesh is not None:
        state = parallel.replicate(state, mesh)  # also after a restore: any device count resumes

    def save():
        if checkpoints is None:
            return None
        loop["seconds"] = seconds_before + time.perf_counter() - start
        return checkpoints.save(loop["done"], state, loop)

    seconds_before = loop["seconds"]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=loop["done"], desc=f"{config.method} search", unit="step",
                   dynamic_ncols=True)

    interrupted = _InterruptFlag(enabled=checkpoints is not None)
    try:
        for epoch in range(loop["epoch"], epochs):
            if epoch != loop["epoch"]:
                loop.update(epoch=epoch, position=0, sums={}, skipped=0)
            sums = loop["sums"]
            epoch_start = time.perf_counter()
            for train_x, train_y, val_x, val_y in batches.epoch(epoch, loop["position"]):
                if loop["done"] >= total_steps:
                    break
                train_batch, val_batch = darts.Batch(train_x, train_y), darts.Batch(val_x, val_y)
                if mesh is None:
                    train_batch = jax.tree.map(jnp.asarray, train_batch)
                    val_batch = jax.tree.map(jnp.asarray, val_batch)
                else:
                    train_batch = parallel.shard_batch(train_batch, mesh)
                    val_batch = parallel.shard_batch(val_batch, mesh)
                state, metrics, finite = step_fn(state, train_batch, val_batch)
                metrics, finite = jax.device_get((metrics, finite))
                if not finite and on_nonfinite == "stop":
                    # the guarded step returned the state before this batch: keep it
                    path = save()
                    raise NonFiniteError(
                        f"non-finite loss or gradient at step {loop['done'] + 1} (epoch {epoch}, batch "
                        f"{loop['position']}); search stopped"
                        + (f"; last finite checkpoint: {path}" if path is not None else ""))
                if finite:
                    for name, value in metrics.items():
                        sums.setdefault(name, []).append(float(value))
                else:
                    loop["skipped"] += 1
                loop["done"] += 1
                loop["position"] += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, val_acc=f"{metrics['val_acc']:.3f}")
                if interrupted.flag:
                    raise SearchInterrupted(loop["done"], save())
                if loop["done"] % checkpoint_every == 0 and loop["done"] < total_steps:
                    save()
            record = {
                "epoch": epoch,
                "steps": len(sums.get("train_loss", [])),
                "train_loss": _mean(sums.get("train_loss")),
                "train_acc": _mean(sums.get("train_acc")),
                "val_loss": _mean(sums.get("val_loss")),
                "val_acc": _mean(sums.get("val_acc")),
                "lr": _mean(sums.get("lr")),
                "arch_updated_steps": int(sum(sums.get("arch_updated", []))),
                "reg_weight": _mean(sums.get("reg_weight")),
                "nonfinite_skipped": int(loop["skipped"]),
            }
            record |= _arch_record(network, edge_softmax, state.arch_params)
            if hessian_fn is not None and (epoch + 1) % config.hessian_every == 0:
                probe_start = time.perf_counter()
                record["hessian_eigenvalue"] = float(hessian_fn(state.params, state.arch_params))
                record["hessian_seconds"] = time.perf_counter() - probe_start
            record["seconds"] = time.perf_counter() - epoch_start
            if table is not None:
                record["nb201"] = table.lookup(record["genotype"])
            history.append(record)
            loop.update(epoch=epoch + 1, position=0, sums={}, skipped=0)
        save()
    finally:
        if bar is not None:
            bar.close()
        interrupted.restore()
        if checkpoints is not None:
            checkpoints.close()

    final = _arch_record(network, edge_softmax, state.arch_params)
    result = {
        "genotype": final["genotype"],
        "arch_weights": final["arch_weights"],
        "ops": list(network.ops),
        "method": config.method,
        "method_options": options,
        "history": history,
        "config": dataclasses.asdict(config) | {"epochs_run": epochs, "total_steps": total_steps},
        "dataset": {"name": dataset.name, "train_images": int(len(dataset.labels)), "image_shape": list(dataset.image_shape)},
        "supernet_params": supernet.count_params(state.params),
        "seconds": seconds_before + time.perf_counter() - start,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": 1 if mesh is None else int(mesh.devices.size),
    }
    if "edge_weights" in final:
        result["edge_weights"] = final["edge_weights"]
    if table is not None:
        lookup = table.lookup(result["genotype"])
        result["nb201"] = {k: lookup[k] for k in ("index", "c10_valid_acc_200", "c10_test_acc_200")}
    return result


def _all_finite(tree) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _guarded(step):
    """``step`` that also returns whether the losses and the updated state are finite,
    and returns the incoming state (only the step count advanced) when they are not.

    A NaN/Inf gradient reaches the weights or α through the optimizer (gradient clipping
    of an infinite norm gives NaN too), so checking the updated state covers the
    gradients without exposing them.
    """

    def guarded(state, train_batch, val_batch):
        new, metrics = step(state, train_batch, val_batch)
        finite = _all_finite((metrics["train_loss"], metrics["val_loss"], new.params, new.arch_params,
                              new.w_opt_state, new.a_opt_state))
        kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o),
                            (new.params, new.arch_params, new.w_opt_state, new.a_opt_state),
                            (state.params, state.arch_params, state.w_opt_state, state.a_opt_state))
        return new._replace(params=kept[0], arch_params=kept[1], w_opt_state=kept[2], a_opt_state=kept[3]), \
            metrics, finite

    return guarded


class _InterruptFlag:
    """Until ``restore``, SIGINT sets ``flag`` instead of raising KeyboardInterrupt, so the
    loop can finish its step, save and stop. Only in the main thread (signals need it)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.flag = False
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        self.flag = True

    def restore(self):
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)
            self.enabled = False


def _arch_record(network, edge_softmax, arch_params) -> dict[str, Any]:
    """What the architecture looks like now: op weights, derived cell, collapse indicators."""
    arch_params = jax.device_get(arch_params)
    weights = np.asarray(jax.nn.softmax(np.asarray(network.op_logits(arch_params)), axis=-1))
    genotype = network.derive(arch_params)
    record = {
        "arch_weights": weights.tolist(),
        "genotype": genotype,
        "param_free_weight": diagnostics.parameter_free_weight(weights, network.ops).tolist(),
        "skip_count": diagnostics.skip_count(genotype),
    }
    if isinstance(arch_params, dict) and "beta" in arch_params:
        record["edge_weights"] = np.asarray(edge_softmax(arch_params["beta"])).tolist()
    return record


def _hessian_probe(search, config: SearchConfig, batches):
    """A jitted ``(params, arch_params) -> eigenvalue`` on fixed validation batches.

    The batches are the first ``hessian_batches`` validation batches of epoch 0's order,
    the same at every epoch, so the curve moves only with (w, α). The Hessian is taken
    with respect to α (the op logits), as in RobustDARTS.
    """
    images, labels = [], []
    for k, (_, _, val_x, val_y) in enumerate(batches.epoch(0)):
        if k >= config.hessian_batches:
            break
        images.append(val_x)
        labels.append(val_y)
    images = jnp.asarray(np.stack(images))
    labels = jnp.asarray(np.stack(labels))
    key = jax.random.fold_in(jax.random.key(config.seed), 0x4E55)

    @jax.jit
    def probe(params, arch_params):
        # with respect to α only (PC-DARTS's edge β held fixed), so methods compare
        def val_loss(alpha):
            arch = arch_params | {"alpha": alpha}
            losses = jax.lax.map(lambda xy: search.loss(params, arch, darts.Batch(*xy))[0], (images, labels))
            return jnp.mean(losses)

        eig, _ = diagnostics.dominant_eigenvalue(val_loss, arch_params["alpha"], key, iters=config.hessian_iters)
        return eig

    return probe
