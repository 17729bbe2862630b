"""XLA compiler options that jnas passes to its jitted steps and scorers.

One setting, for the CPU backend only: which operations XLA hands to YNNPACK.
jax 0.10's XLA CPU runs convolutions in YNNPACK by default, and a YNNPACK
convolution runs on the one thread that executes its thunk (measured: a 3x3
convolution of 64x32x32x16 -> 48 channels takes 5.4 ms with two cores and 5.0 ms
pinned to one), so a 2-core machine only gets both cores busy where the graph has two
independent operations side by side. Left to XLA's own (Eigen) convolution, the same
convolution splits over both cores: 3.1 ms. Dots and reductions stay in YNNPACK.

Measured on the 2-core CPU (2026-11-26, alternating processes, three rounds):
the NAS-Bench-201 first-order DARTS step (batch 64, C=16, N=5) took 1.83 / 1.73 /
1.67 s with the default and 1.54 / 1.37 / 1.30 s with :data:`CPU_COMPILER_OPTIONS`;
batched synflow (125 cells per chunk) 189 -> 221 cells/s; snip unchanged.

A user's own ``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` wins: then
nothing is passed. Other backends get no options, and neither does a jaxlib whose XLA
does not know the option (checked once by compiling a one-line function).
"""

from __future__ import annotations

import functools
import os
import warnings

import jax
import jax.numpy as jnp

_YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"

CPU_COMPILER_OPTIONS = {_YNN_FLAG: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


@functools.lru_cache(maxsize=None)
def _accepted(backend: str) -> bool:
    try:
        probe = jax.device_put(jnp.zeros((2,), jnp.float32), jax.local_devices(backend=backend)[0])
        jax.jit(jnp.negative, compiler_options=CPU_COMPILER_OPTIONS).lower(probe).compile()
    except Exception as err:  # noqa: BLE001 - any rejection means: compile without the option
        warnings.warn(f"jnas.xla_options: this XLA rejects {CPU_COMPILER_OPTIONS} ({err}); "
                      "compiling with XLA's defaults", RuntimeWarning, stacklevel=3)
        return False
    return True


def compiler_options(backend: str | None = None) -> dict | None:
    """Options for ``jax.jit(..., compiler_options=...)`` on ``backend`` (default: JAX's default backend)."""
    backend = backend or jax.default_backend()
    if backend != "cpu" or _YNN_FLAG in os.environ.get("XLA_FLAGS", ""):
        return None
    return dict(CPU_COMPILER_OPTIONS) if _accepted(backend) else None


def jit(fn, **kwargs):
    """``jax.jit(fn, **kwargs)`` with :func:`compiler_options` for the default backend."""
    return jax.jit(fn, compiler_options=compiler_options(), **kwargs)
