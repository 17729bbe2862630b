"""Test-session settings.

The suite uses tiny shapes, so XLA's compile time dominates it. LLVM's optimisation
level changes how fast the compiled elementwise kernels run (and compile: 3x faster at
level 0), not what they compute; benchmarks and the CLI keep XLA's default.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

# Some CLI tests call jnas.cli.main in this process; it would switch the process to
# synchronous CPU dispatch and keep freed memory (jnas.host_memory). The test process keeps
# JAX's and glibc's defaults; tests/test_host_memory.py checks the setting in subprocesses.
os.environ.setdefault("JNAS_REUSE_HOST_MEMORY", "0")
