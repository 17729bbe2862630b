"""Which supernet a differentiable search runs on: ``--space`` to a SearchNetwork."""

from __future__ import annotations

from typing import Callable

import numpy as np

from jnas.supernet.network import SearchNetwork

NB201_SPACES = ("nb201",)
DARTS_SPACES = ("darts", "darts-s1", "darts-s2", "darts-s3", "darts-s4")
SPACES = NB201_SPACES + DARTS_SPACES
# cells: N per stage in NAS-Bench-201; the total number of cells (layers) in DARTS
DEFAULT_CELLS = {"nb201": 5} | {name: 8 for name in DARTS_SPACES}


def build_network(space: str, *, channels: int, cells: int, image_shape, num_classes: int,
                  partial_channels: int = 1, edge_normalization: bool = False
                  ) -> tuple[SearchNetwork, Callable]:
    """The space's search network and its edge-normalization softmax (β -> edge weights)."""
    height, _, in_channels = image_shape
    if space in NB201_SPACES:
        from jnas.supernet import nb201

        config = nb201.SupernetConfig(channels=channels, cells=cells, num_classes=num_classes,
                                      in_channels=in_channels, image_size=height, partial_channels=partial_channels)
        network = nb201.search_network(config, edge_normalization=edge_normalization)
        return network, nb201.edge_softmax
    if space in DARTS_SPACES:
        from jnas.supernet import darts

        config = darts.DartsSupernetConfig(space=space, channels=channels, layers=cells, num_classes=num_classes,
                                           in_channels=in_channels, image_size=height)
        network = darts.search_network(config, partial_channels=partial_channels,
                                       edge_normalization=edge_normalization)
        return network, darts.edge_softmax
    raise ValueError(f"unknown search space {space!r}; known: {', '.join(SPACES)}")


def count_params(params) -> int:
    import jax

    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
