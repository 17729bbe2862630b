"""Pallas kernels, each beside a pure-jnp reference (installed as ``jnas.kernels``).

Import a kernel module explicitly, e.g. ``from jnas.kernels import mixed_op``; nothing is
imported here so that ``import jnas`` never pulls in Pallas.
"""
