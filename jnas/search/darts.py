"""DARTS: differentiable architecture search, first and second order.

One search step is one pure function ``step(state, train_batch, val_batch) ->
(state, metrics)``; the whole state (weights, α, both optimizer states, key, step) is
one pytree, so a step jits once and serves every architecture.

Order of updates, as in NAS-Bench-201's reference search (xautodl
``exps/NAS-Bench-201-algos/DARTS-V1.py``): the weights take an SGD step on the
training batch, then α takes an Adam step on the validation batch.

* First order: ∇_α L_val(w, α).
* Second order (DARTS, Eq. 7): ∇_α L_val(w'(α), α) with the unrolled weights
  ``w'(α) = w - ξ (μ m + ∇_w L_train(w, α) + λ w)`` (ξ the current weight learning
  rate, m the momentum buffer, λ the weight decay), exactly the virtual step of the
  DARTS code. JAX differentiates through the unrolled step, so the implicit term is
  an exact Hessian-vector product, not the paper's finite-difference estimate.

Hyperparameters (defaults) follow NAS-Bench-201's DARTS runs: weights SGD, momentum
0.9, Nesterov, lr 0.025 cosine-annealed to 0.001, weight decay 5e-4 (3e-4 in the DARTS
paper), gradient-norm clipping 5; α Adam, lr 3e-4, betas (0.5, 0.999), weight decay 1e-3.

References:
  Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019.
  Dong & Yang, "NAS-Bench-201", ICLR 2020.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jnas.spaces import nb201 as space
from jnas.supernet import nb201 as supernet


@dataclasses.dataclass(frozen=True)
class DartsConfig:
    """Hyperparameters of a DARTS search (defaults: NAS-Bench-201's DARTS runs)."""

    order: int = 1
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_nesterov: bool = True
    w_weight_decay: float = 5e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3

    def __post_init__(self):
        if self.order not in (1, 2):
            raise ValueError(f"DARTS order must be 1 or 2, got {self.order!r}")


class SearchState(NamedTuple):
    """Everything a DARTS search carries from step to step (a pytree)."""

    params: Any
    arch_params: jax.Array
    w_opt_state: Any
    a_opt_state: Any
    key: jax.Array
    step: jax.Array


class Batch(NamedTuple):
    images: jax.Array
    labels: jax.Array


class DartsSearch(NamedTuple):
    init: Callable[[jax.Array], SearchState]
    step: Callable[[SearchState, Batch, Batch], tuple[SearchState, dict]]
    loss: Callable  # loss(params, arch_params, batch) -> (loss, logits)
    w_tx: optax.GradientTransformation
    a_tx: optax.GradientTransformation
    lr_schedule: Callable


def cross_entropy(logits, labels):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def accuracy(logits, labels):
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def weight_optimizer(config: DartsConfig, total_steps: int):
    schedule = optax.cosine_decay_schedule(
        config.w_lr, max(int(total_steps), 1), alpha=config.w_lr_min / config.w_lr
    )
    tx = optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.add_decayed_weights(config.w_weight_decay),
        optax.sgd(schedule, momentum=config.w_momentum, nesterov=config.w_nesterov),
    )
    return tx, schedule


def arch_optimizer(config: DartsConfig):
    # PyTorch's Adam(weight_decay=...) adds λα to the gradient before the moments.
    return optax.chain(
        optax.add_decayed_weights(config.arch_weight_decay),
        optax.adam(config.arch_lr, b1=config.arch_betas[0], b2=config.arch_betas[1], eps=1e-8),
    )


def arch_weights(arch_params):
    """softmax(α) per edge: the mixed-op weights of DARTS."""
    return jax.nn.softmax(arch_params, axis=-1)


def unrolled_weights(params, arch_params, batch, momentum_buffer, lr, config: DartsConfig, loss_fn):
    """The DARTS virtual step ``w - ξ(μ m + ∇_w L_train + λ w)`` as a function of α."""
    grads = jax.grad(lambda p: loss_fn(p, arch_params, batch)[0])(params)
    return jax.tree.map(
        lambda w, g, m: w - lr * (config.w_momentum * m + g + config.w_weight_decay * w),
        params,
        grads,
        momentum_buffer,
    )


def second_order_arch_grad(params, arch_params, train_batch, val_batch, momentum_buffer, lr, config, loss_fn):
    """∇_α L_val(w'(α), α) through one unrolled weight step (exact, by autodiff)."""

    def outer(alpha):
        w_prime = unrolled_weights(params, alpha, train_batch, momentum_buffer, lr, config, loss_fn)
        return loss_fn(w_prime, alpha, val_batch)

    (loss, logits), grad = jax.value_and_grad(outer, has_aux=True)(arch_params)
    return loss, logits, grad


def momentum_of(w_opt_state, params):
    """The SGD momentum buffer inside the weight optimizer state (zeros if there is none)."""
    traces = optax.tree_utils.tree_get(w_opt_state, "trace", default=None)
    return traces if traces is not None else jax.tree.map(jnp.zeros_like, params)


def make_darts(net_config: supernet.SupernetConfig, config: DartsConfig, total_steps: int, apply_fn=None) -> DartsSearch:
    """Builds a DARTS search over the NAS-Bench-201 supernet.

    Args:
      net_config: shape of the supernet.
      config: DARTS hyperparameters.
      total_steps: length of the search, for the cosine schedule.
      apply_fn: ``apply_fn(params, images, arch_weights) -> logits``; defaults to the
        NAS-Bench-201 supernet (other methods and spaces plug in here).

    Returns:
      A :class:`DartsSearch` whose ``step`` is pure and jittable.
    """
    if apply_fn is None:
        def apply_fn(params, images, weights):
            return supernet.apply(params, images, weights, net_config)

    w_tx, schedule = weight_optimizer(config, total_steps)
    a_tx = arch_optimizer(config)

    def loss_fn(params, arch_params, batch: Batch):
        logits = apply_fn(params, batch.images, arch_weights(arch_params))
        return cross_entropy(logits, batch.labels), logits

    def init(key):
        net_key, arch_key, state_key = jax.random.split(key, 3)
        params = supernet.init(net_key, net_config)
        arch_params = supernet.init_arch_params(arch_key)
        return SearchState(
            params=params,
            arch_params=arch_params,
            w_opt_state=w_tx.init(params),
            a_opt_state=a_tx.init(arch_params),
            key=state_key,
            step=jnp.zeros((), jnp.int32),
        )

    def step(state: SearchState, train_batch: Batch, val_batch: Batch):
        (train_loss, train_logits), w_grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.arch_params, train_batch
        )
        w_updates, w_opt_state = w_tx.update(w_grads, state.w_opt_state, state.params)
        params = optax.apply_updates(state.params, w_updates)

        if config.order == 1:
            (val_loss, val_logits), a_grads = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(
                params, state.arch_params, val_batch
            )
        else:
            lr = schedule(state.step)
            val_loss, val_logits, a_grads = second_order_arch_grad(
                params, state.arch_params, train_batch, val_batch,
                momentum_of(w_opt_state, params), lr, config, loss_fn,
            )
        a_updates, a_opt_state = a_tx.update(a_grads, state.a_opt_state, state.arch_params)
        arch_params = optax.apply_updates(state.arch_params, a_updates)

        metrics = {
            "train_loss": train_loss,
            "train_acc": accuracy(train_logits, train_batch.labels),
            "val_loss": val_loss,
            "val_acc": accuracy(val_logits, val_batch.labels),
            "lr": schedule(state.step),
        }
        new_state = SearchState(params, arch_params, w_opt_state, a_opt_state, state.key, state.step + 1)
        return new_state, metrics

    return DartsSearch(init, step, loss_fn, w_tx, a_tx, schedule)


def genotype(arch_params) -> str:
    """The derived cell (argmax per edge) as the official NAS-Bench-201 arch string."""
    return space.format_arch(space.derive(jax.device_get(arch_weights(arch_params))))
