"""The dominant eigenvalue of the Hessian of the validation loss with respect to α.

Zela et al. ("Understanding and Robustifying DARTS", ICLR 2020) showed that DARTS's
collapse to parameter-free ops goes with a growing dominant eigenvalue of
∇²_α L_val(w, α): the search settles in sharp regions of the architecture space, and
discretisation then hurts. They compute it on the validation data at the current
weights; so does this module, with exact Hessian-vector products
(forward-over-reverse: ``jvp`` of ``grad``) and power iteration, never forming the
Hessian. ``dense_hessian`` forms it, for tests on tiny problems.

Power iteration converges to the eigenvalue of largest magnitude. The dominant
eigenvalue of this Hessian is positive in practice (and is what RobustDARTS plots);
if a negative one dominates, the returned value is negative and says so.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


def hvp(loss_fn: Callable, arch_params, vector):
    """``H v`` with ``H = ∇² loss_fn(arch_params)``, both pytrees of the same structure."""
    return jax.jvp(jax.grad(loss_fn), (arch_params,), (vector,))[1]


def dense_hessian(loss_fn: Callable, arch_params) -> jax.Array:
    """The full Hessian over the flattened ``arch_params`` (``(n, n)``; tiny problems only)."""
    flat, unravel = ravel_pytree(arch_params)
    return jax.hessian(lambda x: loss_fn(unravel(x)))(flat)


def dominant_eigenvalue(loss_fn: Callable, arch_params, key: jax.Array, iters: int = 20,
                        tol: float = 1e-4) -> tuple[jax.Array, jax.Array]:
    """Power iteration on exact Hessian-vector products of ``loss_fn`` at ``arch_params``.

    Args:
      loss_fn: ``arch_params -> scalar`` (e.g. the validation loss at fixed weights and
        batch; average several batches inside it for a less noisy estimate).
      arch_params: where the Hessian is taken (any pytree of float arrays).
      key: the random start vector.
      iters: maximum number of iterations (one HVP each).
      tol: stop once successive Rayleigh quotients differ by less than ``tol`` relative.

    Returns:
      ``(eigenvalue, eigenvector)``: the Rayleigh quotient ``vᵀHv`` of the final unit
      vector and that vector (flattened). Jittable; ``iters`` and ``tol`` are static.
    """
    flat, unravel = ravel_pytree(arch_params)
    flat_loss = lambda x: loss_fn(unravel(x))
    matvec = lambda v: jax.jvp(jax.grad(flat_loss), (flat,), (v,))[1]

    v = jax.random.normal(key, flat.shape, flat.dtype)
    v = v / jnp.linalg.norm(v)

    def body(carry):
        i, v, eig, _ = carry
        hv = matvec(v)
        new_eig = jnp.vdot(v, hv)
        norm = jnp.linalg.norm(hv)
        v_next = jnp.where(norm > 0, hv / jnp.where(norm > 0, norm, 1.0), v)
        return i + 1, v_next, new_eig, eig

    def cond(carry):
        i, _, eig, prev = carry
        converged = jnp.abs(eig - prev) <= tol * jnp.maximum(jnp.abs(eig), 1e-12)
        return (i < iters) & ((i < 2) | ~converged)

    init = (jnp.asarray(0), v, jnp.asarray(0.0, flat.dtype), jnp.asarray(jnp.inf, flat.dtype))
    _, v, _, _ = jax.lax.while_loop(cond, body, init)
    eig = jnp.vdot(v, matvec(v))
    return eig, v
