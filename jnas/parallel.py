"""Data parallelism across devices and hosts with JAX's own sharding machinery.

A search step stays the single-device function it is
(``step(state, train_batch, val_batch) -> (state, metrics)``); spreading it over
devices is a matter of *where the arrays live*:

* a 1-D :class:`jax.sharding.Mesh` over the devices, its axis named ``"data"``;
* the global batch split along its leading axis (``NamedSharding(mesh, P("data"))``);
* the weights, α, optimizer states, key and step replicated (``P()``);
* the step jitted with those shardings as ``in_shardings`` / ``out_shardings``.

XLA's SPMD partitioner then runs each device on its slice of the batch and inserts
the all-reduces itself: every mean over the batch (the loss, and each BatchNorm's
mean and variance) becomes a per-device partial sum followed by an all-reduce, so the
gradients of the weights and of α arrive replicated, and so do the updated weights,
α and optimizer states. Nothing in ``jnas.search`` knows about devices.

BatchNorm uses batch statistics. Under ``jit`` with a sharded batch those are the
statistics of the *global* batch (the partitioner all-reduces the per-channel sums),
so N devices compute the same function as one device with the same global batch;
only the order of floating-point additions differs. ``tests/test_parallel.py``
checks the α trajectory and the genotype of DARTS and PC-DARTS on 1, 2, 4 and 8
(simulated) devices against one device and states the tolerance.

The same pattern splits any leading axis: :func:`shard_leading_axis` spreads
architectures x initialisations (``jnas score``) or a population (supernet-mode
``jnas evolve``) over the devices of a ``jax.vmap``-ed evaluator; with no reduction
across that axis, each device computes its rows exactly as one device would.

Several processes (hosts): call :func:`initialize_distributed` first, in every
process, before any other JAX call; ``jax.devices()`` then lists the devices of all
processes, :func:`make_mesh` spans them, and every process runs the same program on
the same global values (multi-controller JAX). On CPU the cross-process collectives
are gloo's (``jax_cpu_collectives_implementation``, gloo by default in jax 0.10).
Only :func:`is_primary` (process 0) should write results and checkpoints.

References:
  JAX docs, "Distributed arrays and automatic parallelization" and "Multi-process
  environments" (docs.jax.dev).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jnas import xla_options

DATA_AXIS = "data"

__all__ = [
    "DATA_AXIS",
    "make_mesh",
    "device_count",
    "data_sharding",
    "replicated_sharding",
    "shard_batch",
    "replicate",
    "shard_leading_axis",
    "gather",
    "data_parallel_step",
    "initialize_distributed",
    "is_primary",
]


def device_count(devices: str | int | None = "all") -> int:
    """How many devices ``devices`` (``"all"``, ``None`` or a positive int) asks for."""
    available = jax.device_count()
    if devices is None or devices == "all":
        return available
    if isinstance(devices, str):
        try:
            devices = int(devices)
        except ValueError:
            raise ValueError(f"devices must be 'all' or a positive integer, got {devices!r}") from None
    if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)) or devices <= 0:
        raise ValueError(f"devices must be 'all' or a positive integer, got {devices!r}")
    if devices > available:
        raise ValueError(
            f"asked for {devices} devices but only {available} are visible "
            f"({jax.default_backend()}, {jax.process_count()} process(es)); on CPU, simulate more with "
            "XLA_FLAGS=--xla_force_host_platform_device_count=N"
        )
    if jax.process_count() > 1 and devices != available:
        # the first N global devices would leave some processes without a device of the mesh
        raise ValueError(f"with {jax.process_count()} processes, use all {available} devices, not {devices}")
    return int(devices)


def make_mesh(devices: str | int | None = "all", axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D device mesh over the first ``devices`` of ``jax.devices()``.

    Args:
      devices: ``"all"`` (default), ``None`` (the same) or a positive int N: the first N
        global devices (across all processes after :func:`initialize_distributed`).
      axis_name: the mesh axis name (``"data"``).

    Returns:
      A :class:`jax.sharding.Mesh` of shape ``(N,)`` in *auto* sharding mode, so that
      ``jax.jit`` with ``NamedSharding`` arguments lets XLA's SPMD partitioner place the
      collectives (``jax.make_mesh`` defaults to explicit mode).
    """
    n = device_count(devices)
    return jax.make_mesh((n,), (axis_name,), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh's (only) axis, the rest whole."""
    return NamedSharding(mesh, P(mesh.axis_names[0]))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def _put(x, sharding: NamedSharding):
    """``jax.device_put`` that also works for a global sharding in multi-process JAX.

    With one process this is ``jax.device_put``. With several, every process holds the
    same global value and fills only its own devices' slices from it
    (``jax.make_array_from_callback``); typed PRNG keys travel as their key data.
    """
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        data = _put(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=impl)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _check_divisible(x, mesh: Mesh, what: str) -> None:
    n = mesh.devices.size
    shape = np.shape(x)
    if not shape:
        raise ValueError(f"cannot split a scalar {what} over {n} devices; it needs a leading axis")
    if shape[0] % n:
        raise ValueError(
            f"{what} has leading size {shape[0]}, which {n} devices cannot split evenly; "
            f"use a multiple of {n} (or fewer devices)"
        )


def shard_batch(batch, mesh: Mesh, *, process_local: bool = False):
    """Splits every leaf of ``batch`` (e.g. a ``Batch(images, labels)``) along axis 0.

    Args:
      batch: a pytree of arrays sharing their leading (batch) size.
      mesh: from :func:`make_mesh`.
      process_local: with several processes, ``True`` means each process passes only
        its own part of the global batch (its ``1 / process_count`` slice, in process
        order), as a per-host input pipeline produces; ``False`` (default) means every
        process passes the same global batch.

    Raises:
      ValueError: if the global batch size is not a multiple of the device count.
    """
    sharding = data_sharding(mesh)
    if process_local and jax.process_count() > 1:
        def put_local(x):
            local = np.asarray(x)
            global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
            _check_divisible(np.empty(global_shape[:1]), mesh, "the global batch")
            return jax.make_array_from_process_local_data(sharding, local, global_shape)

        return jax.tree.map(put_local, batch)

    def put(x):
        _check_divisible(x, mesh, "the global batch")
        return _put(x, sharding)

    return jax.tree.map(put, batch)


def replicate(tree, mesh: Mesh):
    """Every leaf of ``tree`` (weights, α, optimizer states, keys) copied to every device."""
    sharding = replicated_sharding(mesh)
    return jax.tree.map(lambda x: _put(x, sharding), tree)


def shard_leading_axis(tree, mesh: Mesh):
    """Splits every leaf of ``tree`` along axis 0 over the mesh (architectures, inits, a population).

    Pair it with ``jax.vmap`` over that axis and a jitted function: each device then
    evaluates its own rows. The leading size must be a multiple of the device count;
    pad the last chunk (and drop the padding afterwards) when it is not.
    """
    sharding = data_sharding(mesh)

    def put(x):
        _check_divisible(x, mesh, "the sharded axis")
        return _put(x, sharding)

    return jax.tree.map(put, tree)


def gather(tree, mesh: Mesh):
    """Every leaf of ``tree`` replicated over ``mesh`` (split leaves all-gathered).

    With several processes no process can read a split array whole; after this, every
    process can (``jax.device_get``, ``np.asarray``).
    """
    return jax.jit(lambda x: x, out_shardings=replicated_sharding(mesh))(tree)


def data_parallel_step(step_fn: Callable, mesh: Mesh, *, donate_state: bool = False) -> Callable:
    """Jits ``step_fn(state, train_batch, val_batch) -> outputs`` data-parallel.

    ``step_fn`` is typically ``make_darts(...).step`` (outputs ``(state, metrics)``) or
    the runner's guarded step (``(state, metrics, finite)``). ``state`` and all the
    outputs are replicated over ``mesh`` and both batches split along
    their leading axis, so XLA's SPMD partitioner all-reduces the weight and α gradients
    (and the BatchNorm statistics) and every device applies the same update.

    Args:
      step_fn: the pure step, e.g. ``make_darts(...).step``.
      mesh: from :func:`make_mesh`.
      donate_state: donate the input state's buffers (as the single-device runner does).

    Returns:
      The jitted step. Give it arguments that already carry these shardings
      (:func:`replicate` for the state, :func:`shard_batch` for the batches), so that
      no step starts with a hidden transfer or resharding.
    """
    replicated = replicated_sharding(mesh)
    split = data_sharding(mesh)
    return xla_options.jit(
        step_fn,
        in_shardings=(replicated, split, split),
        out_shardings=replicated,  # a prefix: every output, whatever the step returns
        donate_argnums=(0,) if donate_state else (),
    )


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, **kwargs: Any) -> bool:
    """Starts multi-process JAX (``jax.distributed.initialize``) when asked to.

    Call it in every process before any other JAX call.

    Args:
      coordinator: ``HOST:PORT`` of process 0's coordinator service; ``"auto"`` lets JAX
        detect everything from the cluster it runs in (Cloud TPU pod slices, Slurm,
        Open MPI). ``None``: JAX reads ``JAX_COORDINATOR_ADDRESS``.
      num_processes: P, the number of processes (``None``: ``JAX_NUM_PROCESSES``, a jnas
        convention, else detected by JAX).
      process_id: I in ``[0, P)``, this process's rank (``None``: ``JAX_PROCESS_ID``,
        a jnas convention, else detected by JAX).
      **kwargs: passed on (``local_device_ids``, ``initialization_timeout``, ...).

    Returns:
      ``True`` if distributed JAX was started; ``False`` if nothing asked for it (no
      argument and none of the environment variables above) or if it asked for a
      single process without a coordinator: one process then runs alone.
    """
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if coordinator == "auto":
        jax.distributed.initialize(None, num_processes, process_id, **kwargs)
        return True
    if coordinator is None and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
        if num_processes is None or num_processes == 1:
            return False
        raise ValueError(f"{num_processes} processes need a coordinator HOST:PORT (or JAX_COORDINATOR_ADDRESS)")
    jax.distributed.initialize(coordinator, num_processes, process_id, **kwargs)
    return True


def is_primary() -> bool:
    """True in process 0: the one process that writes results and checkpoints."""
    return jax.process_index() == 0
