"""Keep the host memory of XLA's CPU calls in the process, from one call to the next.

XLA's CPU runtime allocates every call's buffers afresh: the NAS-Bench-201 DARTS step
(batch 64, C=16, N=5) asks for one ~700 MB temporary buffer and its outputs per call.
glibc serves blocks that large with ``mmap`` and gives them back with ``munmap``, so
each call faults its buffers in again page by page (measured on the 2-core CPU: 172,000
minor page faults and 0.35-0.45 s of system time per first-order step). Under a
hypervisor that takes back the guest's free memory (this machine's virtio balloon
reports free pages to the host), pages left free for a few seconds are reclaimed and
the next fault goes to the host: touching 1 GiB of fresh memory took 0.11 s right after
freeing it and 0.6-1.5 s after a 3-6 s pause. A search that shares the machine with
other work, or runs host code between steps, pays that on every step.

:func:`reuse_host_memory` serves the buffers from memory the process keeps:

* glibc's ``mallopt``: large blocks come from the heap, not from ``mmap``
  (``M_MMAP_MAX = 0``), and the heap's free top is kept up to 2 GiB
  (``M_TRIM_THRESHOLD``), so a freed buffer is there for the next call;
* JAX's CPU client runs computations on the calling thread
  (``jax_cpu_enable_async_dispatch = False``). glibc gives other threads arenas whose
  heaps are at most 64 MiB and maps larger blocks requested there whatever
  ``M_MMAP_MAX`` says; XLA's dispatch thread is such a thread.

Measured (``experiments/bench_step``, README "Speed"): the first-order step, stepped in
turn with the PyTorch reference, 2.39 -> 1.81 s median (0 page faults, 0.03 s of system
time per step). What it costs: freed memory stays with the process (resident size stays
at its peak; the peak itself is unchanged), and CPU calls return when their result is
ready instead of being queued (the search loop reads every step's metrics anyway; the
proxies' scorer no longer overlaps one chunk's bookkeeping with the next chunk, and still
scored 300 cells of jacob_cov in 33 s against 35 s without the setting). It
changes process-wide settings, so the library never applies it by itself: the ``jnas``
command line does (unless ``JNAS_REUSE_HOST_MEMORY=0``), and a script calls
:func:`reuse_host_memory` before its first JAX computation.
"""

from __future__ import annotations

import ctypes
import os
import platform
import warnings

import jax

ENV_VAR = "JNAS_REUSE_HOST_MEMORY"
# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the largest is 2 GiB
# What GLIBC_TUNABLES says for the same malloc settings, for a child process (the
# reference implementations' processes in the benchmarks get the same allocator).
GLIBC_TUNABLES = f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={_TRIM_THRESHOLD}"

_applied = {"malloc": False}


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None


def _async_dispatch() -> bool:
    return bool(jax.config.values.get("jax_cpu_enable_async_dispatch", True))


def _backends_initialized() -> bool:
    from jax._src import xla_bridge

    check = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(check()) if check is not None else bool(getattr(xla_bridge, "_backends", {}))


def reuse_host_memory(warn: bool = True) -> dict:
    """Apply both settings of the module doc; call it before the first JAX computation.

    Returns what is in effect, ``{"malloc": bool, "sync_dispatch": bool}``: ``malloc``
    is false off glibc, ``sync_dispatch`` false when JAX's backends already exist (the
    client reads the setting when it is created; ``warn``: say so in a warning).
    """
    mallopt = _glibc()
    if mallopt is not None:
        _applied["malloc"] = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    if _backends_initialized() and _async_dispatch():
        if warn:
            warnings.warn("jnas.host_memory: JAX's backends already exist, so CPU calls stay asynchronous "
                          "(call reuse_host_memory() before the first JAX computation)", RuntimeWarning,
                          stacklevel=2)
    else:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    return state()


def enabled() -> bool:
    """False where the environment says ``JNAS_REUSE_HOST_MEMORY=0`` (or ``false``, ``no``)."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no")


def reuse_unless_disabled() -> dict:
    """What the ``jnas`` command line calls: :func:`reuse_host_memory` if :func:`enabled`.

    Quiet where JAX's backends already exist (``jnas.cli.main`` called from a Python
    session that has computed something): the malloc half still applies.
    """
    return reuse_host_memory(warn=False) if enabled() else state()


def state() -> dict:
    """The settings in effect in this process (as recorded in benchmark results)."""
    return {"malloc": _applied["malloc"], "sync_dispatch": not _async_dispatch()}
