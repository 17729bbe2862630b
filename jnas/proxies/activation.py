"""Activation-based zero-cost proxies: NASWOT (``nwot``) and Zen-score (``zen``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jnas import prng
from jnas.proxies import network
from jnas.supernet import nb201 as supernet


def nwot(params, batch, encodings, key, *, config: supernet.SupernetConfig, capacity=None):
    """NASWOT score (Mellor et al., "Neural Architecture Search without Training", ICML 2021).

    Variant (the paper's final form and its code ``score_networks.py``, ``hook_logdet``):
    for every ReLU module, the binary code ``c`` of its input (``x > 0``) on a batch of
    ``B`` images; ``K_H = Σ_ReLUs c c^T + (1-c)(1-c)^T`` (``B x B``, i.e. the number of
    units minus the Hamming distance); score ``log |det K_H|``. Each ReLU-conv op has its
    own ReLU, so a node feeding ``m`` conv edges counts ``m`` times, as in the reference
    network. BatchNorm in train mode. Forward pass only.
    """
    del key
    images = batch[0]
    num = encodings.shape[0]
    tape = network.Tape(collect_codes=True)
    network.apply(params, images[None], encodings, config, variant="bn", capacity=capacity, tape=tape)
    kernel = sum(tape.kernels)
    diag = jnp.diagonal(kernel, axis1=1, axis2=2)[:, :1]  # all diagonal entries equal the unit count
    _, logdet = jnp.linalg.slogdet(kernel / diag[:, :, None])
    return logdet + kernel.shape[-1] * jnp.log(diag[:, 0])


def gaussian_params(params, key):
    """Zen-NAS's init: conv/linear weights N(0, 1), biases 0, BN scale 1 and shift 0."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, len(leaves))
    out = []
    for (path, leaf), k in zip(leaves, keys):
        name = path[-1].key if hasattr(path[-1], "key") else str(path[-1])
        if network.is_weight_path(path):
            out.append(prng.normal(k, leaf.shape, leaf.dtype))
        elif name.startswith("scale"):
            out.append(jnp.ones_like(leaf))
        else:
            out.append(jnp.zeros_like(leaf))
    return jax.tree_util.tree_unflatten(treedef, out)


def zen(params, batch, encodings, key, *, config: supernet.SupernetConfig, capacity=None, alpha: float = 0.01):
    """Zen-score (Lin et al., "Zen-NAS", ICCV 2021).

    Variant (the paper's Eq. and Algorithm 1): weights re-drawn from N(0, 1) with zero
    biases (Zen-NAS's ``network_weight_gaussian_init``; ``params`` only gives the
    structure), Gaussian inputs ``x`` and ``ε``, ``f`` the feature map before global
    average pooling (after the head's BN+ReLU), BatchNorm in train mode;
    ``Φ = mean_n Σ |f(x) - f(x + α ε)|`` with ``α = 0.01``; score
    ``log Φ + Σ_BN log sqrt(mean_j σ_j²)`` with ``σ_j`` the batch standard deviations of
    every BatchNorm's input on ``x`` (the paper's definition; NASLib's port reads
    ``running_var`` and so skips NB201's statistics-free cell BNs). Data-free: ``batch``
    gives the input shape.
    """
    images = batch[0]
    num = encodings.shape[0]
    w_key, x_key, e_key = jax.random.split(key, 3)
    weights = gaussian_params(params, w_key)
    x = prng.normal(x_key, images.shape, jnp.float32)
    eps = prng.normal(e_key, images.shape, jnp.float32)
    tape = network.Tape()
    feats, _ = network.apply(weights, x[None], encodings, config, variant="bn", capacity=capacity, tape=tape,
                             features_only=True)
    mixed = x + alpha * eps
    feats2, _ = network.apply(weights, mixed[None], encodings, config, variant="bn", capacity=capacity,
                              features_only=True)
    phi = jnp.mean(jnp.sum(jnp.abs(feats - feats2), axis=(2, 3, 4)), axis=1)
    bn_term = jnp.zeros((num,), jnp.float32)
    for log_std, slots in tape.bn_stds:
        bn_term = bn_term + network.scatter_to_archs(log_std, slots, num)
    return jnp.log(phi) + bn_term
