"""Gradient-based zero-cost proxies: synflow, snip, grasp, fisher, grad_norm, jacob_cov.

Definitions follow Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS"
(ICLR 2021) and their reference code (zero-cost-nas, ``foresight/pruners/measures``):
every *per-parameter* score is taken over the weights of Conv2d and Linear layers only
(not biases, not BatchNorm), and summed over all parameters of the network. All
functions here take ``(params, batch, encodings, key)`` and return ``(A,)`` scores for
``A`` architectures sharing one initialisation; ``jnas.proxies.batched`` vmaps them
over initialisations.

Per-architecture weight gradients come from per-slot output gradients (see
``jnas.proxies.network``), so a kernel shared in memory by many architectures never
mixes their gradients, and the parameters of ops an architecture did not choose get
no score.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jnas.proxies import network
from jnas.supernet import nb201 as supernet


def _broadcast(images, num):
    return jnp.broadcast_to(images, (num,) + images.shape)


def _per_arch_layer_sums(records, meta, grads, num, stat):
    """Sum over layers of ``stat(w, dw_slot) -> (K,)``, scattered to architectures."""

    def per_slot(record, m, g):
        return stat(record["w"], network.slot_weight_grad(record["x"], g, m))

    return network.sum_over_layers(records, meta, grads, per_slot, num)


def _cross_entropy(logits, labels):
    """Mean cross-entropy per architecture, ``(A,)`` (PyTorch's ``F.cross_entropy``)."""
    logp = jax.nn.log_softmax(logits)
    picked = jnp.take_along_axis(logp, labels[None, :, None], axis=-1)[..., 0]
    return -jnp.mean(picked, axis=-1)


def synflow(params, batch, encodings, key, *, config: supernet.SupernetConfig, capacity=None, exact: bool = False):
    """log synflow (Tanaka et al., NeurIPS 2020, as a NAS proxy by Abdelfattah et al. 2021).

    Network (zero-cost-nas ``synflow``, ``bn=False``): all parameters replaced by their
    absolute values, BatchNorm removed from the stem, cells and head (the reduction
    blocks keep theirs, in train mode, as the reference's ``get_prunable_copy`` does),
    one all-ones input image, ``R = sum of the logits``. The reference runs in float64;
    here the network is exactly rescaled per architecture (``network`` module docstring)
    and the *natural log* of the score is returned, so values of 1e60 and beyond neither
    overflow nor lose precision in float32. Data-free: ``batch`` only gives the image shape.

    ``exact=False`` (default): Tanaka et al.'s score ``Σ θ ⊙ ∂R/∂θ`` over conv/linear
    weights, summed with its signs, as ONE forward-mode derivative (below). ``exact=True``:
    zero-cost-nas's ``Σ |θ ⊙ ∂R/∂θ|``, every weight gradient formed in a backward pass.
    The two differ only through the reduction blocks' BatchNorm branches, the one place
    where ``∂R/∂θ`` can be negative (BN is scale invariant, so ``θ · ∂R/∂θ`` of the
    convolutions before it is ~0 while ``|θ ⊙ ∂R/∂θ|`` is not): measured at NAS-Bench-201
    scale on 125 cells, at most 1.3e-3 apart in log (mean 3e-5), against scores spanning
    ~100; the forward form took 0.6x the time and half the compile time of the backward
    one (``experiments/zero_cost/README.md``). The tests check each against a float64
    stand-alone network.

    Forward form: ``Σ_θ θ · ∂R/∂θ = d/dt R(θ (1 + t))`` at ``t = 0`` (Euler's identity
    along the scaling direction), and ``Tape.weight_scale`` applies ``(1 + t_a)`` to
    architecture ``a``'s conv/linear weights, so ``jax.jvp`` along ``t = 1`` gives every
    architecture's score from one forward pass carrying a tangent: no backward pass, no
    stored activations, no per-layer gradient products.
    """
    del key
    images = batch[0]
    num = encodings.shape[0]
    abs_params = jax.tree_util.tree_map(jnp.abs, params)
    ones = jnp.ones((1, 1) + images.shape[1:], jnp.float32)  # one input shared by all architectures

    if not exact:
        # Each stage's cells under lax.scan: same values (bit for bit, measured), half the
        # compile time (15 vs 31-44 s for 125 cells at NB201 size) and the same step time.
        scanned = dataclasses.replace(config, scan_cells=True)

        def logit_sums(t):
            tape = network.Tape(weight_scale=t, forward_mode=True)
            logits, log_scale = network.apply(abs_params, ones, encodings, scanned, variant="synflow", capacity=capacity,
                                              tape=tape)
            return jnp.sum(logits, axis=(1, 2)), log_scale

        zero = jnp.zeros((num,), jnp.float32)
        (_, log_scale), (derivative, _) = jax.jvp(logit_sums, (zero,), (jnp.ones_like(zero),))
        return jnp.log(derivative) + log_scale

    def objective(tape):
        logits, log_scale = network.apply(abs_params, ones, encodings, config, variant="synflow", capacity=capacity, tape=tape)
        return jnp.sum(logits), log_scale

    records, meta, grads, log_scale = network.with_output_grads(objective)

    def per_slot(record, m, g):
        dw = network.slot_weight_grad(record["x"], g, m)
        return jnp.sum(jnp.abs(record["w"][None] * dw), axis=tuple(range(1, dw.ndim)))

    return jnp.log(network.sum_over_layers(records, meta, grads, per_slot, num)) + log_scale


def _loss_grads(params, batch, encodings, config, capacity):
    images, labels = batch
    num = encodings.shape[0]
    inputs = images[None]  # shared by all architectures: the stem runs once

    def objective(tape):
        logits, _ = network.apply(params, inputs, encodings, config, variant="bn", capacity=capacity, tape=tape)
        return jnp.sum(_cross_entropy(logits, labels)), None

    records, meta, grads, _ = network.with_output_grads(objective)
    return records, meta, grads, num


def snip(params, batch, encodings, key, *, config: supernet.SupernetConfig, capacity=None):
    """SNIP (Lee et al., ICLR 2019) as a NAS proxy: ``sum |θ ⊙ ∂L/∂θ|`` over conv/linear weights.

    Variant (zero-cost-nas ``snip``): network with BatchNorm in train mode, ``L`` the mean
    cross-entropy of one labelled batch, the gradient of ``L`` w.r.t. an all-ones weight
    mask (which equals ``θ ⊙ ∂L/∂θ``).
    """
    del key
    records, meta, grads, num = _loss_grads(params, batch, encodings, config, capacity)
    return _per_arch_layer_sums(records, meta, grads, num, lambda w, dw: jnp.sum(jnp.abs(w[None] * dw), axis=tuple(range(1, dw.ndim))))


def grad_norm(params, batch, encodings, key, *, config: supernet.SupernetConfig, capacity=None):
    """Gradient norm (Abdelfattah et al. 2021): ``sum over layers of ||∂L/∂W_layer||_2``.

    Variant (zero-cost-nas ``grad_norm``): per conv/linear layer the Euclidean norm of
    its weight gradient (mean cross-entropy, BatchNorm in train mode), summed over layers.
    """
    del key
    records, meta, grads, num = _loss_grads(params, batch, encodings, config, capacity)
    return _per_arch_layer_sums(records, meta, grads, num, lambda w, dw: jnp.sqrt(jnp.sum(jnp.square(dw), axis=tuple(range(1, dw.ndim)))))


def fisher(params, batch, encodings, key, *, config: supernet.SupernetConfig, capacity=None):
    """Fisher (Theis et al. 2018; Turner et al., BlockSwap, ICLR 2020) as in zero-cost-nas.

    Per conv/linear layer and output channel ``k``: ``Δ_k = ½ mean_n (Σ_{h,w} a_nkhw g_nkhw)²``
    with ``a`` the layer's output (conv + bias, before BN) and ``g = ∂L/∂a``. The reference
    (``mode='channel'``) broadcasts ``Δ_k`` to every weight of channel ``k`` before summing,
    so each channel counts ``fan_in = C_in·k_h·k_w`` times; kept here for equal values.
    """
    del key
    records, meta, grads, num = _loss_grads(params, batch, encodings, config, capacity)

    def per_slot(record, m, g):
        prod = record["y"] * g
        per_sample = jnp.sum(prod, axis=(2, 3)) if m.kind == "conv" else prod  # (K, B, C)
        delta = 0.5 * jnp.mean(jnp.square(per_sample), axis=1)
        fan_in = int(np.prod(record["w"].shape[:-1]))
        return jnp.sum(delta, axis=-1) * fan_in

    return network.sum_over_layers(records, meta, grads, per_slot, num)


def grasp(params, batch, encodings, key, *, config: supernet.SupernetConfig, capacity=None):
    """GraSP (Wang et al., ICLR 2020) as a NAS proxy: ``-Σ θ ⊙ (H g)`` over conv/linear weights.

    Variant (zero-cost-nas ``grasp``, T=1, one iteration): ``g = ∂L/∂θ`` held constant,
    ``Hg = ∂(g · ∂L/∂θ)/∂θ``, score ``sum(-θ ⊙ Hg)`` (the sign the reference settled on).
    ``θ · ∇(g·∇L)`` is the derivative w.r.t. a per-architecture factor ``(1 + t_a)`` on all
    of architecture ``a``'s conv/linear weights (``Tape.weight_scale``), so it stays per
    architecture although the kernels are shared.
    """
    del key
    images, labels = batch
    num = encodings.shape[0]
    inputs = images[None]

    def slot_grads(weight_scale):
        """Per-slot weight gradients with arch ``a``'s weights acting as ``θ(1 + t_a)``."""

        def objective(tape):
            logits, _ = network.apply(params, inputs, encodings, config, variant="bn", capacity=capacity, tape=tape)
            return jnp.sum(_cross_entropy(logits, labels)), None

        records, meta, grads, _ = network.with_output_grads(objective, {"weight_scale": weight_scale})
        dws = []
        for r, m, g in zip(records, meta, grads):
            fn = lambda r_, g_, m=m: network.slot_weight_grad(r_["x"], g_, m)  # noqa: E731
            dws.append(jax.vmap(fn)(r, g) if m.stacked else fn(r, g))
        holder["meta"] = meta
        return dws, [r["slots"] for r in records]

    # One forward-over-reverse pass: the primal is g = ∂L/∂θ per slot, the tangent along
    # t = (1, ..., 1) is d(∂L/∂θ)/dt_a = H_a θ_a per slot (architectures do not interact:
    # own inputs, own BatchNorm statistics), so g · tangent is θ · H g per architecture.
    zero = jnp.zeros((num,), jnp.float32)
    holder = {}
    (first, slots), (tangents, _) = jax.jvp(slot_grads, (zero,), (jnp.ones_like(zero),))
    total = jnp.zeros((num,), jnp.float32)
    for g0, hg, sl, m in zip(first, tangents, slots, holder["meta"]):
        lead = 2 if m.stacked else 1
        values = jnp.sum(g0 * hg, axis=tuple(range(lead, hg.ndim))).reshape(-1)
        total = total + network.scatter_to_archs(values, sl.reshape(-1), num)
    return -total


def jacob_cov(params, batch, encodings, key, *, config: supernet.SupernetConfig, capacity=None):
    """Jacobian covariance (Mellor et al., NASWOT arXiv v1, 2020), as in zero-cost-nas.

    ``J`` = gradient of the sum of all logits w.r.t. each input image (BatchNorm in train
    mode), flattened to ``(B, H·W·C)``; ``Σ`` its row correlation matrix (``np.corrcoef``),
    eigenvalues ``λ``; score ``-Σ (log(λ + k) + 1/(λ + k))`` with ``k = 1e-5``.
    """
    del key
    images = batch[0]
    num = encodings.shape[0]

    def total(inputs):
        logits, _ = network.apply(params, inputs, encodings, config, variant="bn", capacity=capacity)
        return jnp.sum(logits)

    jac = jax.grad(total)(_broadcast(images, num)).reshape(num, images.shape[0], -1)
    centered = jac - jnp.mean(jac, axis=-1, keepdims=True)
    cov = network.per_arch_gram(centered)
    std = jnp.sqrt(jnp.diagonal(cov, axis1=1, axis2=2))
    corr = cov / (std[:, :, None] * std[:, None, :])
    eig = jnp.linalg.eigvalsh(corr)
    k = 1e-5
    return -jnp.sum(jnp.log(eig + k) + 1.0 / (eig + k), axis=-1)
