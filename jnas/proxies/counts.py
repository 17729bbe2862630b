"""``params`` and ``flops``: closed-form counts of the discrete NAS-Bench-201 network.

Counted as NAS-Bench-201 counts them for its inference networks (Dong & Yang, ICLR
2020; ``cifar10_params_mb`` in the table is this count / 1e6): stem conv (no bias) +
affine BN; each ``nor_conv_kxk`` edge a k x k conv (no bias) + affine BN; reduction
blocks conv_a, conv_b (+ affine BNs) and the 1x1 shortcut conv; head BN and linear
(with bias). ``flops`` counts multiply-accumulates of convolutions and the linear
layer, in millions (NAS-Bench-201's "FLOPs"). Only the chosen ops count.
"""

from __future__ import annotations

import jax.numpy as jnp

from jnas.proxies import network
from jnas.supernet import nb201 as supernet


def _per_edge(encodings, c):
    conv3 = jnp.sum(encodings == network.CONV3, axis=-1)
    conv1 = jnp.sum(encodings == network.CONV1, axis=-1)
    return conv3, conv1


def params(params_, batch, encodings, key, *, config: supernet.SupernetConfig, capacity=None):
    """Number of trainable parameters of each discrete architecture, ``(A,)`` float32."""
    del params_, batch, key, capacity
    c, n = config.channels, config.cells
    conv3, conv1 = _per_edge(encodings, c)
    total = 9 * config.in_channels * c + 2 * c
    for s, width in enumerate((c, 2 * c, 4 * c)):
        total = total + n * (conv3 * (9 * width * width + 2 * width) + conv1 * (width * width + 2 * width))
        if s < 2:
            out = 2 * width
            total = total + 9 * width * out + 2 * out + 9 * out * out + 2 * out + width * out
    total = total + 2 * 4 * c + 4 * c * config.num_classes + config.num_classes
    return jnp.asarray(total, jnp.float32)


def flops(params_, batch, encodings, key, *, config: supernet.SupernetConfig, capacity=None):
    """Millions of multiply-accumulates of one image through each discrete architecture."""
    del params_, batch, key, capacity
    c, n = config.channels, config.cells
    conv3, conv1 = _per_edge(encodings, c)
    size = config.image_size
    total = 9 * config.in_channels * c * size * size
    for s, width in enumerate((c, 2 * c, 4 * c)):
        hw = size * size
        total = total + n * hw * (conv3 * 9 * width * width + conv1 * width * width)
        if s < 2:
            out = 2 * width
            size = size // 2
            hw = size * size
            total = total + hw * (9 * width * out + 9 * out * out + width * out)
    total = total + 4 * c * config.num_classes
    return jnp.asarray(total, jnp.float32) / 1e6
