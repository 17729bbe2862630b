"""DARTS, PC-DARTS and β-DARTS: differentiable architecture search, first and second order.

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
  DARTS code. The implicit term ``-ξ ∇²_{α,w} L_train · ∇_{w'} L_val`` is, with
  ``hvp="finite_difference"`` (default), the paper's central difference (Eq. 8:
  ``ε = 0.01 / ||∇_{w'} L_val||``, gradients w.r.t. α at ``w ± ε ∇_{w'} L_val``), as the
  original code computes it; with ``hvp="exact"`` JAX differentiates through the
  unrolled step (an exact Hessian-vector product by a double backward: on CPU 2.9x
  slower and 1.4x the peak memory, ``experiments/results/bench_step.json``).

Hyperparameters (defaults) follow NAS-Bench-201's DARTS runs: weights SGD, momentum
0.9, Nesterov, lr 0.025 cosine-annealed to 0.001, weight decay 5e-4 (3e-4 in the DARTS
paper), gradient-norm clipping 5; α Adam, lr 3e-4, betas (0.5, 0.999), weight decay 1e-3.

The network is any :class:`jnas.supernet.network.SearchNetwork`, so the same step
serves every space, and the variants are options of one step:

* **PC-DARTS** lives in the network (partial channels, edge-normalization β, which is
  part of ``arch_params`` and trained with α); the step adds its warm-up:
  ``arch_warmup_steps`` steps that train only the weights (the reference starts α's
  updates at epoch 15 of 50). Reference lr for α: 6e-4.
* **β-DARTS** adds the beta-decay regularizer to the α objective::

      L_β(α) = mean over edges of log Σ_k exp(α_k)      (logsumexp of each edge's logits)
      L_α = L_val(w, α) + λ_e · L_β(α),   λ_e = λ · e / E   (e the epoch, E the epochs)

  so λ grows linearly from 0 to λ (default 50). The regularizer is Eq. (5)-(7) of the
  paper (the smoothmax of α, whose gradient softmax(α) decays α towards small and
  uniform magnitudes); the schedule follows the authors' NAS-Bench-201 code, which
  uses ``50 * epoch / 100`` over its 100-epoch default. It applies to α only, never
  to PC-DARTS's β, and works with PC-DARTS too.

References:
  Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019.
  Dong & Yang, "NAS-Bench-201", ICLR 2020.
  Xu et al., "PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture
    Search", ICLR 2020.
  Ye et al., "β-DARTS: Beta-Decay Regularization for Differentiable Architecture
    Search", CVPR 2022.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jnas.spaces import nb201 as space
from jnas.supernet import nb201 as supernet
from jnas.supernet import ops as supernet_ops
from jnas.supernet.network import SearchNetwork

__all__ = ["SearchNetwork"]  # re-exported: spaces build it, searchers consume it


HVP_MODES = ("finite_difference", "exact")
HVP_R = 0.01  # DARTS's finite-difference radius: ε = HVP_R / ||v||
# One looped gradient pass for all of a step's gradients (``make_darts``): order 2 on
# every network, order 1 on networks with gated filter gradients. Tests switch it off to
# compare with the plain path.
_FUSE_SECOND_ORDER = True
_FUSE_FIRST_ORDER = True


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
    arch_warmup_steps: int = 0
    beta_decay: float = 0.0
    hvp: str = "finite_difference"

    def __post_init__(self):
        if self.order not in (1, 2):
            raise ValueError(f"DARTS order must be 1 or 2, got {self.order!r}")
        if self.hvp not in HVP_MODES:
            raise ValueError(f"hvp must be one of {HVP_MODES}, got {self.hvp!r}")
        if self.arch_warmup_steps < 0:
            raise ValueError(f"arch_warmup_steps must be >= 0, got {self.arch_warmup_steps}")
        if not self.beta_decay >= 0:
            raise ValueError(f"beta_decay (λ) must be >= 0, got {self.beta_decay}")


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
    network: SearchNetwork


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


def beta_decay_loss(op_logits):
    """β-DARTS's regularizer: the mean over edges of logsumexp of the op logits."""
    return jnp.mean(jax.nn.logsumexp(op_logits, axis=-1))


def beta_decay_weight(step, lam: float, steps_per_epoch: int, epochs: int):
    """λ_e = λ · e / E with e = step // steps_per_epoch (β-DARTS's linear schedule)."""
    epoch = jnp.asarray(step) // max(int(steps_per_epoch), 1)
    return lam * epoch.astype(jnp.float32) / max(int(epochs), 1)


def unrolled_weights(params, arch_params, batch, momentum_buffer, lr, config: DartsConfig, loss_fn):
    """The DARTS virtual step ``w - ξ(μ m + ∇_w L_train + λ w)`` as a function of α."""
    grads = jax.grad(lambda p: loss_fn(p, arch_params, batch)[0])(params)
    return virtual_step(params, grads, momentum_buffer, lr, config)


def virtual_step(params, grads, momentum_buffer, lr, config: DartsConfig):
    """``w - ξ(μ m + g + λ w)`` for given weight gradients ``g``."""
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


def finite_difference_arch_grad(params, arch_params, train_batch, val_batch, momentum_buffer, lr, config,
                                loss_fn):
    """∇_α L_val(w'(α), α) with the implicit term by DARTS's central difference (Eq. 8).

    ``g_α - ξ (∇_α L_train(w⁺, α) - ∇_α L_train(w⁻, α)) / (2ε)`` with ``g_α, v`` the
    gradients of ``L_val(w', α)``, ``w± = w ± ε v`` and ``ε = 0.01 / ||v||``: four
    passes over the network and no second derivatives (the original DARTS code's
    ``_hessian_vector_product``).
    """
    w_prime = unrolled_weights(params, arch_params, train_batch, momentum_buffer, lr, config, loss_fn)
    (loss, logits), (v, g_alpha) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        w_prime, arch_params, val_batch
    )
    return loss, logits, finite_difference_correction(params, arch_params, train_batch, v, g_alpha, lr, loss_fn)


def finite_difference_correction(params, arch_params, train_batch, v, g_alpha, lr, loss_fn):
    """``g_α - ξ (∇_α L_train(w + εv, α) - ∇_α L_train(w - εv, α)) / (2ε)``, ``ε = 0.01 / ||v||``."""
    eps = difference_radius(v)

    def train_arch_grad(sign):
        w = jax.tree.map(lambda p, d: p + sign * eps * d, params, v)
        return jax.grad(lambda a: loss_fn(w, a, train_batch)[0])(arch_params)

    # One after the other in a loop: one compiled pass instead of two, and XLA cannot
    # schedule both forward passes before either backward (two sets of residuals live).
    plus_minus = jax.lax.map(train_arch_grad, jnp.array([1.0, -1.0], jnp.float32))
    return central_difference(g_alpha, plus_minus, eps, lr)


def difference_radius(v):
    """DARTS's ``ε = 0.01 / ||v||``."""
    return HVP_R / optax.tree.norm(v)


def central_difference(g_alpha, plus_minus, eps, lr):
    """``g_α - ξ (g⁺ - g⁻) / (2ε)`` with ``plus_minus`` holding ``g⁺, g⁻`` stacked on a leading axis."""
    return jax.tree.map(lambda g, pm: g - lr * (pm[0] - pm[1]) / (2 * eps), g_alpha, plus_minus)


def momentum_of(w_opt_state, params):
    """The SGD momentum buffer inside the weight optimizer state (zeros if there is none)."""
    traces = optax.tree_utils.tree_get(w_opt_state, "trace", default=None)
    return traces if traces is not None else jax.tree.map(jnp.zeros_like, params)


def _nb201_network(net_config: supernet.SupernetConfig, apply_fn=None) -> SearchNetwork:
    """The NAS-Bench-201 network with a bare ``(6, 5)`` α (the DARTS tests' form; an ``apply_fn``
    stand-in takes the supernet's code paths, fused first-order step included)."""
    if apply_fn is None:
        def apply_fn(params, images, weights):
            return supernet.apply(params, images, weights, net_config)

    return SearchNetwork(
        init=lambda key: supernet.init(key, net_config),
        init_arch=supernet.init_arch_params,
        apply=lambda params, images, alpha: apply_fn(params, images, arch_weights(alpha)),
        op_logits=lambda alpha: alpha,
        ops=tuple(space.OPS),
        derive=genotype,
        gated_filter_gradients=True,
    )


def make_darts(network, config: DartsConfig, total_steps: int, apply_fn=None,
               steps_per_epoch: int | None = None) -> DartsSearch:
    """Builds a DARTS (PC-DARTS, β-DARTS) search.

    Args:
      network: a :class:`SearchNetwork`, or a NAS-Bench-201 ``SupernetConfig`` (then α
        is a bare ``(6, 5)`` array).
      config: hyperparameters; ``beta_decay`` > 0 turns on β-DARTS,
        ``arch_warmup_steps`` PC-DARTS's warm-up.
      total_steps: length of the search, for the cosine schedule.
      apply_fn: with a ``SupernetConfig`` only: ``apply_fn(params, images,
        arch_weights) -> logits`` replaces the supernet (the tests plug tiny nets in).
      steps_per_epoch: for β-DARTS's epoch-wise λ schedule (default: ``total_steps``,
        one epoch).

    Returns:
      A :class:`DartsSearch` whose ``step`` is pure and jittable. Its metrics include
      ``arch_updated`` (0 during the warm-up) and ``reg_weight`` (λ_e).
    """
    if isinstance(network, supernet.SupernetConfig):
        network = _nb201_network(network, apply_fn)
    elif apply_fn is not None:
        raise ValueError("apply_fn goes with a SupernetConfig; a SearchNetwork brings its own apply")

    w_tx, schedule = weight_optimizer(config, total_steps)
    a_tx = arch_optimizer(config)
    spe = steps_per_epoch or max(int(total_steps), 1)
    epochs = -(-max(int(total_steps), 1) // spe)

    def loss_fn(params, arch_params, batch: Batch):
        logits = network.apply(params, batch.images, arch_params)
        return cross_entropy(logits, batch.labels), logits

    def arch_objective(step):
        """The α objective: L_val plus, for β-DARTS, λ_e L_β(α)."""
        lam = beta_decay_weight(step, config.beta_decay, spe, epochs) if config.beta_decay else 0.0

        def objective(params, arch_params, batch):
            loss, logits = loss_fn(params, arch_params, batch)
            if config.beta_decay:
                loss = loss + lam * beta_decay_loss(network.op_logits(arch_params))
            return loss, logits

        return objective, lam

    def init(key):
        net_key, arch_key, state_key = jax.random.split(key, 3)
        params = network.init(net_key)
        arch_params = network.init_arch(arch_key)
        return SearchState(
            params=params,
            arch_params=arch_params,
            w_opt_state=w_tx.init(params),
            a_opt_state=a_tx.init(arch_params),
            key=state_key,
            step=jnp.zeros((), jnp.int32),
        )

    def arch_update(state, params, w_opt_state, train_batch, val_batch):
        objective, lam = arch_objective(state.step)
        if config.order == 1:
            (_, val_logits), a_grads = jax.value_and_grad(objective, argnums=1, has_aux=True)(
                params, state.arch_params, val_batch
            )
            arch_params, a_opt_state = adam_step(state, a_grads)
        else:
            lr = schedule(state.step)
            hypergradient = finite_difference_arch_grad if config.hvp == "finite_difference" else second_order_arch_grad
            _, val_logits, a_grads = hypergradient(
                params, state.arch_params, train_batch, val_batch,
                momentum_of(w_opt_state, params), lr, config, loss_fn,
            )
            arch_params, a_opt_state = regularized_arch_step(state, a_grads, lam)
        return arch_params, a_opt_state, val_logits

    def weight_update(w, opt_state, w_grads):
        """The weights' optimizer step: ``(w, opt_state) -> (stepped w, new opt_state)``."""
        updates, new_opt_state = w_tx.update(w_grads, opt_state, w)
        return optax.apply_updates(w, updates), new_opt_state

    def adam_step(state, a_grads):
        a_updates, a_opt_state = a_tx.update(a_grads, state.a_opt_state, state.arch_params)
        return optax.apply_updates(state.arch_params, a_updates), a_opt_state

    def regularized_arch_step(state, a_grads, lam):
        """α's step from a gradient of L_val alone: β-DARTS's term is added here (the plain
        order-1 path's objective has it)."""
        if config.beta_decay:
            reg_grad = jax.grad(lambda a: beta_decay_loss(network.op_logits(a)))(state.arch_params)
            a_grads = jax.tree.map(lambda g, r: g + lam * r, a_grads, reg_grad)
        return adam_step(state, a_grads)

    def fused_second_order(state, train_batch, val_batch):
        """Order 2 (finite-difference HVP, no warm-up) with ONE compiled gradient pass for five.

        The weight step's gradient (train batch, w), the unrolled step's (train batch,
        w after that step), the validation gradient (val batch, w') and the two
        finite-difference passes (train batch, w ± εv) are the same function,
        ``∇_{w,α} L(w, α, batch)``, at different points; a five-iteration loop evaluates
        it once compiled instead of twice (a full and an α-only pass: order-2 compile
        time). In the last two iterations the convolutions' filter gradients are
        skipped at run time (:func:`jnas.supernet.ops.filter_gradients_when`), so they
        cost what the α-only passes cost, and a ``lax.switch`` runs only the update each
        iteration needs (selecting over every weight cost compile time and memory
        traffic). Same arithmetic as the unfused path; the α gradients of the first two
        passes are unused and cost a few channel sums. (At NAS-Bench-201 size the float32
        central difference is dominated by rounding: this path, the unfused one and the
        earlier three-pass loop agree on the α gradient only to about 35 % (relative
        norm) after one step, while the weights agree to 4e-9; the tests compare them on
        a small cell where the difference is well resolved.)
        """
        lr = schedule(state.step)
        images = jnp.stack([train_batch.images, val_batch.images])
        labels = jnp.stack([train_batch.labels, val_batch.labels])
        grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)

        def weight_step(carry, gw):
            w, _, opt_state, w_minus, eps = carry
            stepped, new_opt_state = weight_update(w, opt_state, gw)
            return stepped, stepped, new_opt_state, w_minus, eps

        def unrolled_step(carry, gw):
            w, stepped, opt_state, w_minus, eps = carry
            return virtual_step(w, gw, momentum_of(opt_state, w), lr, config), stepped, opt_state, w_minus, eps

        def difference_points(carry, v):  # v = ∇_w L_val(w'): the points stepped ± εv
            _, stepped, opt_state, _, _ = carry
            eps = difference_radius(v)
            plus = jax.tree.map(lambda p, d: p + eps * d, stepped, v)
            minus = jax.tree.map(lambda p, d: p - eps * d, stepped, v)
            return plus, stepped, opt_state, minus, eps

        def to_minus(carry, _):
            _, stepped, opt_state, minus, eps = carry
            return minus, stepped, opt_state, minus, eps

        def body(carry, k):
            w = carry[0]
            batch = Batch(images[(k == 2).astype(jnp.int32)], labels[(k == 2).astype(jnp.int32)])
            with supernet_ops.filter_gradients_when(k < 3):
                (loss, logits), (gw, ga) = grad_fn(w, state.arch_params, batch)
            # only the update this iteration needs runs (no selects over every weight)
            carry = jax.lax.switch(k, [weight_step, unrolled_step, difference_points, to_minus, to_minus], carry, gw)
            return carry, (loss, logits, ga)

        init = (state.params, state.params, state.w_opt_state, state.params, jnp.zeros((), jnp.float32))
        (_, params, w_opt_state, _, eps), (losses, logits, gas) = jax.lax.scan(body, init, jnp.arange(5))
        train_loss, train_logits, val_logits = losses[0], logits[0], logits[2]
        g_alpha = jax.tree.map(lambda g: g[2], gas)
        a_grads = central_difference(g_alpha, jax.tree.map(lambda g: g[3:], gas), eps, lr)
        arch_params, a_opt_state = regularized_arch_step(state, a_grads, arch_objective(state.step)[1])
        return train_loss, train_logits, params, w_opt_state, arch_params, a_opt_state, val_logits

    def fused_first_order(state, train_batch, val_batch):
        """Order 1 with ONE compiled gradient pass for two (compile time), as :func:`fused_second_order`.

        The weight step's gradient (train batch, w) and the α gradient (val batch, the
        stepped w) are ``∇_{w,α} L(w, α, batch)`` at two points: a two-iteration loop
        compiles it once. In the second iteration the filter gradients are skipped at run
        time, so it costs what the plain path's α-only pass costs (its other weight
        gradients, a few channel sums and the classifier's, are discarded).
        """
        grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)

        def body(carry, batch_and_k):
            batch, k = batch_and_k
            with supernet_ops.filter_gradients_when(k == 0):
                (loss, logits), (gw, ga) = grad_fn(carry[0], state.arch_params, batch)
            carry = jax.lax.cond(k == 0, lambda c, g: weight_update(*c, g), lambda c, _: c, carry, gw)
            return carry, (loss, logits, ga)

        batches = jax.tree.map(lambda t, v: jnp.stack([t, v]), train_batch, val_batch)
        (params, w_opt_state), (losses, logits, gas) = jax.lax.scan(
            body, (state.params, state.w_opt_state), (batches, jnp.arange(2)))
        a_grads = jax.tree.map(lambda g: g[1], gas)
        arch_params, a_opt_state = regularized_arch_step(state, a_grads, arch_objective(state.step)[1])
        return losses[0], logits[0], params, w_opt_state, arch_params, a_opt_state, logits[1]

    def step(state: SearchState, train_batch: Batch, val_batch: Batch):
        same_shapes = all(t.shape == v.shape for t, v in zip(train_batch, val_batch))
        fused = None
        if not config.arch_warmup_steps and same_shapes:
            if _FUSE_SECOND_ORDER and config.order == 2 and config.hvp == "finite_difference":
                fused = fused_second_order
            elif _FUSE_FIRST_ORDER and config.order == 1 and network.gated_filter_gradients:
                fused = fused_first_order
        if fused is not None:
            (train_loss, train_logits, params, w_opt_state, arch_params, a_opt_state,
             val_logits) = fused(state, train_batch, val_batch)
            return _finish(state, train_batch, val_batch, train_loss, train_logits, params, w_opt_state,
                           arch_params, a_opt_state, val_logits, jnp.asarray(True))
        (train_loss, train_logits), w_grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.arch_params, train_batch
        )
        params, w_opt_state = weight_update(state.params, state.w_opt_state, w_grads)

        if config.arch_warmup_steps:
            def frozen(operands):
                st, p, _, _, vb = operands
                # the weights still train; α, β and Adam's moments stay as they are
                return st.arch_params, st.a_opt_state, network.apply(p, vb.images, st.arch_params)

            active = state.step >= config.arch_warmup_steps
            arch_params, a_opt_state, val_logits = jax.lax.cond(
                active, lambda ops: arch_update(*ops), frozen,
                (state, params, w_opt_state, train_batch, val_batch),
            )
        else:
            active = jnp.asarray(True)
            arch_params, a_opt_state, val_logits = arch_update(state, params, w_opt_state, train_batch, val_batch)
        return _finish(state, train_batch, val_batch, train_loss, train_logits, params, w_opt_state, arch_params,
                       a_opt_state, val_logits, active)

    def _finish(state, train_batch, val_batch, train_loss, train_logits, params, w_opt_state, arch_params,
                a_opt_state, val_logits, active):
        metrics = {
            "train_loss": train_loss,
            "train_acc": accuracy(train_logits, train_batch.labels),
            "val_loss": cross_entropy(val_logits, val_batch.labels),
            "val_acc": accuracy(val_logits, val_batch.labels),
            "lr": schedule(state.step),
            "arch_updated": active.astype(jnp.float32),
            "reg_weight": jnp.asarray(arch_objective(state.step)[1], jnp.float32),
        }
        new_state = SearchState(params, arch_params, w_opt_state, a_opt_state, state.key, state.step + 1)
        return new_state, metrics

    return DartsSearch(init, step, loss_fn, w_tx, a_tx, schedule, network)


def genotype(arch_params) -> str:
    """The derived cell (argmax per edge) as the official NAS-Bench-201 arch string."""
    return space.format_arch(space.derive(jax.device_get(arch_weights(arch_params))))
