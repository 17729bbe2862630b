"""jnas.host_memory: XLA's CPU buffers reuse the process's memory instead of fresh pages.

Each check runs in its own Python process: the settings are process-wide, and the
test process keeps JAX's and glibc's defaults (conftest.py).
"""

import json
import os
import platform
import subprocess
import sys

import pytest

from jnas import host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# The three timed calls' 128 MiB temporaries, in 4 KiB pages.
_TEMP_PAGES = 3 * (8192 * 4096 * 4) // 4096

# A jitted function whose 128 MiB intermediate is a temporary buffer of every call;
# prints the minor page faults of three calls after two warm-up calls.
_PROBE = r"""
import json, resource, sys, warnings
from jnas import host_memory
if sys.argv[1] == "late":
    import jax.numpy as jnp
    jnp.zeros(1).block_until_ready()  # the backend exists before the call
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    state = host_memory.reuse_host_memory() if sys.argv[1] != "off" else host_memory.state()
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w: jnp.sum(jnp.tanh(x @ w) @ w.T))
x, w = jnp.ones((8192, 64)), jnp.full((64, 4096), 1e-2)
for _ in range(2):
    f(x, w).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    f(x, w).block_until_ready()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"state": state, "faults": faults, "warnings": [str(w.message) for w in caught]}))
"""


def _probe(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != host_memory.ENV_VAR}
    proc = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the malloc half is glibc's mallopt")
def test_calls_stop_faulting_in_fresh_pages():
    off, on = _probe("off"), _probe("on")
    assert off["state"] == {"malloc": False, "sync_dispatch": False}
    assert on["state"] == {"malloc": True, "sync_dispatch": True}
    assert off["faults"] > _TEMP_PAGES / 2, off  # the default maps each call's temporary afresh
    assert on["faults"] < off["faults"] / 10, (on, off)


@pytest.mark.skipif(not GLIBC, reason="the malloc half is glibc's mallopt")
def test_too_late_for_dispatch_warns_and_says_so():
    late = _probe("late")
    assert late["state"] == {"malloc": True, "sync_dispatch": False}
    assert any("backends already exist" in w for w in late["warnings"])
    # malloc's half alone keeps nothing: XLA's dispatch thread maps its large blocks anyway
    assert late["faults"] > _TEMP_PAGES / 2, late


def test_environment_switch(monkeypatch):
    for value, expected in (("0", False), ("false", False), ("No", False), ("1", True), ("", True)):
        monkeypatch.setenv(host_memory.ENV_VAR, value)
        assert host_memory.enabled() is expected
    monkeypatch.delenv(host_memory.ENV_VAR)
    assert host_memory.enabled()
    monkeypatch.setenv(host_memory.ENV_VAR, "0")
    assert host_memory.reuse_unless_disabled() == host_memory.state()  # nothing applied


def test_command_line_applies_it(monkeypatch, tmp_path):
    from jnas import cli

    calls = []
    monkeypatch.setattr(host_memory, "reuse_unless_disabled", lambda: calls.append(1) or host_memory.state())
    assert cli.main(["search", "--dataset", "nope", "--out", str(tmp_path / "o")]) == 2
    assert calls == [1]


def test_reference_gets_the_same_malloc_settings(monkeypatch):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments", "bench_step"))
    try:
        import compare
    finally:
        sys.path.pop(0)
    monkeypatch.delenv(host_memory.ENV_VAR, raising=False)
    assert compare.reference_env()["GLIBC_TUNABLES"] == host_memory.GLIBC_TUNABLES
    monkeypatch.setenv(host_memory.ENV_VAR, "0")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert "GLIBC_TUNABLES" not in compare.reference_env()
