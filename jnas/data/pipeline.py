"""The bi-level split of a training set and its deterministic, resumable batches.

DARTS-style search trains the network weights on one half of the training set and the
architecture parameters on the other (Liu et al., 2019, "DARTS: Differentiable
Architecture Search", Sec. 2.3 and the ``train_portion=0.5`` of the reference code).
:class:`BilevelBatches` makes that split once, from a seed, and then yields one
``(train_x, train_y, val_x, val_y)`` tuple per search step.

Everything random is a pure function of ``(seed, epoch[, step])`` through
``np.random.default_rng`` seeded with a tuple that starts with the seed and a stream tag,
so no global state is read, the streams never collide, and a run resumed at
``(epoch, start_step)`` sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from jnas.data.datasets import Dataset
from jnas.data.errors import DataError

# Stream tags: numpy's SeedSequence treats [s] and [s, 0] alike, so the streams are kept
# apart by a tag in the second position rather than by the tuple's length.
_SPLIT_STREAM = 0x5B17
_ORDER_STREAM = 0x0DE2
_AUGMENT_STREAM = 0xA06E

CROP_PADDING = 4


def _check_int(value, what: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def augment_batch(
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    pad_value: np.ndarray | float = 0.0,
    padding: int = CROP_PADDING,
) -> np.ndarray:
    """Standard CIFAR augmentation: random crop of a padded image, then random h-flip.

    Each image is padded by ``padding`` pixels on every side with ``pad_value``, cropped
    back to its size at an offset uniform in ``0..2*padding`` on each axis, and flipped
    left-right with probability 1/2 (He et al., 2016, Sec. 4.2).

    Args:
      images: ``(B, H, W, C)`` float images.
      rng: the generator that draws the offsets and flips (consumed).
      pad_value: scalar or per-channel ``(C,)`` fill value; pass ``-mean / std`` for
        normalised images so the border is black, as torchvision pads before normalising.
      padding: pixels of padding on each side.

    Returns:
      A new ``(B, H, W, C)`` array of the same dtype.
    """
    b, h, w, c = images.shape
    padded = np.empty((b, h + 2 * padding, w + 2 * padding, c), images.dtype)
    padded[...] = np.asarray(pad_value, images.dtype)
    padded[:, padding : padding + h, padding : padding + w] = images
    dy = rng.integers(0, 2 * padding + 1, size=b)
    dx = rng.integers(0, 2 * padding + 1, size=b)
    flip = rng.random(b) < 0.5
    rows = dy[:, None] + np.arange(h)  # (B, H)
    cols = dx[:, None] + np.arange(w)  # (B, W)
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


class BilevelBatches:
    """Splits a training set into a weight half and an architecture half, and batches both.

    The split is a fixed permutation drawn from ``seed``: the first ``N // 2`` images of
    it train the weights (``train_*``), the next ``N // 2`` update the architecture
    (``val_*``); with odd ``N`` the last image is unused. Within each half, epoch ``e``
    visits the images in an order drawn from ``(seed, e)``, ``batch_size`` at a time,
    dropping the remainder.

    Attributes:
      dataset: the training set (kept by reference, never copied).
      batch_size: images per half per step.
      seed: the non-negative seed of every random draw.
      augment: whether batches get :func:`augment_batch` (random crop + flip), drawn from
        ``(seed, epoch, step)``.
      train_indices, val_indices: the dataset indices of the two halves, ``(N // 2,)``.
      steps_per_epoch: ``(N // 2) // batch_size``, at least 1.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, augment: bool = False):
        self.dataset = dataset
        self.batch_size = _check_int(batch_size, "batch_size", minimum=1)
        self.seed = _check_int(seed, "seed", minimum=0)
        self.augment = bool(augment)
        half = len(dataset.labels) // 2
        self.steps_per_epoch = half // self.batch_size
        if self.steps_per_epoch < 1:
            raise DataError(
                f"dataset {dataset.name!r} is too small for batch_size {self.batch_size}: "
                f"{len(dataset.labels)} images give halves of {half}"
            )
        perm = np.random.default_rng([self.seed, _SPLIT_STREAM]).permutation(len(dataset.labels))
        self.train_indices = perm[:half]
        self.val_indices = perm[half : 2 * half]
        for a in (self.train_indices, self.val_indices):
            a.flags.writeable = False
        if dataset.mean is not None and dataset.std is not None:
            self._pad_value = -np.asarray(dataset.mean, np.float32) / np.asarray(
                dataset.std, np.float32
            )
        else:
            self._pad_value = np.float32(0.0)

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The dataset indices of both halves in the visiting order of ``epoch``."""
        epoch = _check_int(epoch, "epoch", minimum=0)
        rng = np.random.default_rng([self.seed, _ORDER_STREAM, epoch])
        half = len(self.train_indices)
        return self.train_indices[rng.permutation(half)], self.val_indices[rng.permutation(half)]

    def epoch(
        self, epoch: int, start_step: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Yields ``(train_x, train_y, val_x, val_y)`` for steps ``start_step..steps_per_epoch-1``.

        Args:
          epoch: the epoch number (>= 0); with the seed it fixes the order and the
            augmentation, so a resumed run repeats an uninterrupted one exactly.
          start_step: the first step to yield, ``0..steps_per_epoch`` (the latter yields
            nothing, for a run stopped at the end of an epoch).

        Yields:
          ``train_x``, ``val_x``: float32 ``(batch_size, H, W, C)``; ``train_y``,
          ``val_y``: int32 ``(batch_size,)``. Fresh arrays, safe to modify.

        Raises:
          DataError: negative epoch, or start_step outside ``0..steps_per_epoch``
            (raised on the call, not on the first ``next``).
        """
        train_order, val_order = self.epoch_order(epoch)
        start_step = _check_int(start_step, "start_step", minimum=0)
        if start_step > self.steps_per_epoch:
            raise DataError(
                f"start_step {start_step} is past the end of an epoch of "
                f"{self.steps_per_epoch} steps"
            )
        return self._batches(int(epoch), start_step, train_order, val_order)

    def _batches(self, epoch, start_step, train_order, val_order):
        images, labels, bs = self.dataset.images, self.dataset.labels, self.batch_size
        for step in range(start_step, self.steps_per_epoch):
            t_idx = train_order[step * bs : (step + 1) * bs]
            v_idx = val_order[step * bs : (step + 1) * bs]
            train_x, val_x = images[t_idx], images[v_idx]
            if self.augment:
                rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, epoch, step])
                train_x = augment_batch(train_x, rng, pad_value=self._pad_value)
                val_x = augment_batch(val_x, rng, pad_value=self._pad_value)
            yield (
                np.asarray(train_x, np.float32),
                np.asarray(labels[t_idx], np.int32),
                np.asarray(val_x, np.float32),
                np.asarray(labels[v_idx], np.int32),
            )
