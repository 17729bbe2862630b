"""Image classification data sets as normalised numpy arrays on the host.

``load_dataset`` is the one entry point. It returns a :class:`Dataset` of float32 NHWC
images, normalised per channel with fixed constants, and int32 labels. Sources:

- ``digits``: scikit-learn's bundled 8x8 digits (no download), the default, so every
  command and test runs offline. Split by a fixed permutation (seed 0): the first 80%
  is ``train``, the rest ``test``.
- ``fashion_mnist``, ``cifar10``, ``cifar100``: with ``data_dir=None`` through
  tensorflow-datasets' random-access ``tfds.data_source`` (array_record files; no
  TensorFlow needed), which must already hold a prepared copy; with ``data_dir`` from
  the standard distribution files in that directory (see :mod:`jnas.data.local`).

Data sets are small enough (<= 60000 images of <= 32x32x3) to live in host memory as
one array; batches are gathered from it by :class:`jnas.data.pipeline.BilevelBatches`.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from jnas.data import local
from jnas.data.errors import DataError

DATASETS = ("digits", "fashion_mnist", "cifar10", "cifar100")
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class _Spec:
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]  # per channel, on the [0, 1] pixel scale
    std: tuple[float, ...]


# Digits: pixel values 0..16 scaled to [0, 1]; mean and std of the train split (the first
# 1437 images of np.random.default_rng(0).permutation(1797)), checked by the tests.
DIGITS_MEAN = 0.3054466
DIGITS_STD = 0.3760368
DIGITS_SEED = 0
DIGITS_TRAIN_FRACTION = (4, 5)

_SPECS = {
    "digits": _Spec((8, 8, 1), 10, (DIGITS_MEAN,), (DIGITS_STD,)),
    "fashion_mnist": _Spec((28, 28, 1), 10, (0.2860,), (0.3530,)),
    "cifar10": _Spec((32, 32, 3), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": _Spec((32, 32, 3), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One split of an image classification data set, held in host memory.

    Attributes:
      name: the data set's name, one of ``DATASETS`` (or any name for a hand-made set).
      images: ``float32`` ``(N, H, W, C)``, normalised per channel:
        ``(pixel / max_pixel - mean) / std``.
      labels: ``int32`` ``(N,)`` in ``0..num_classes-1``.
      num_classes: number of classes.
      mean, std: the per-channel constants (on the [0, 1] pixel scale) used to
        normalise ``images``; ``None`` for a hand-made set that is not normalised.
        Augmentation pads with the normalised value of a black pixel, ``-mean / std``,
        as torchvision's ``RandomCrop(padding=4)`` before ``Normalize`` does.

    Arrays loaded by :func:`load_dataset` are read-only: one copy serves every epoch.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.images.ndim != 4:
            raise DataError(
                f"dataset {self.name!r}: images must be NHWC, got shape {self.images.shape}"
            )
        if self.labels.shape != (len(self.images),):
            raise DataError(
                f"dataset {self.name!r}: labels shape {self.labels.shape} does not match "
                f"{len(self.images)} images"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)


def _normalise(pixels: np.ndarray, max_pixel: float, spec: _Spec) -> np.ndarray:
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    images = pixels.astype(np.float32) / np.float32(max_pixel)
    images -= mean
    images /= std
    return images


@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Digits pixels ``(1797, 8, 8)`` in 0..16, labels, and the fixed split permutation."""
    from sklearn.datasets import load_digits  # slow import, needed only here

    bunch = load_digits()
    pixels = bunch.images.astype(np.uint8)  # exact: integers 0..16
    labels = bunch.target.astype(np.int32)
    perm = np.random.default_rng(DIGITS_SEED).permutation(len(labels))
    for a in (pixels, labels, perm):
        a.flags.writeable = False
    return pixels, labels, perm


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    pixels, labels, perm = _digits_raw()
    num, den = DIGITS_TRAIN_FRACTION
    num_train = len(perm) * num // den
    idx = perm[:num_train] if split == "train" else perm[num_train:]
    return pixels[idx][..., None], labels[idx]


def _load_tfds(name: str, split: str, limit: int | None, spec: _Spec):
    """Reads a prepared tensorflow-datasets copy through ``tfds.data_source`` (no TF)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(
            f"dataset {name!r}: tensorflow-datasets is not importable ({e}); "
            "pass --data-dir with the standard local files"
        ) from None
    try:
        # download=False: preparing a copy needs internet and TF-era dependencies; a
        # missing copy is reported below rather than attempted here.
        source = tfds.data_source(name, split=split, download=False)
        count = len(source)
    except Exception as e:  # tfds reports a missing copy as KeyError, AssertionError, ...
        detail = " ".join(str(e).split())[:200]
        raise DataError(
            f"dataset {name!r} split {split!r}: tensorflow-datasets has no prepared copy "
            f"(tfds.data_source failed: {type(e).__name__}: {detail}); without internet "
            "pass --data-dir with the standard local files"
        ) from None
    if limit is not None:
        count = min(count, limit)
    images = np.empty((count, *spec.image_shape), np.uint8)
    labels = np.empty((count,), np.int32)
    for i in range(count):
        # One record at a time: the random-access API; 60000 reads take a few seconds.
        example = source[i]
        image = np.asarray(example["image"])
        if image.shape != spec.image_shape:
            raise DataError(
                f"dataset {name!r} (tfds): record {i} has image shape {image.shape}, "
                f"expected {spec.image_shape}"
            )
        images[i] = image
        labels[i] = int(example["label"])
    return images, labels


def _load_local(name: str, split: str, data_dir: str | os.PathLike, limit: int | None):
    if name == "fashion_mnist":
        images, labels = local.read_idx_split(data_dir, split)
        return images[:limit], labels[:limit]
    if name == "cifar10":
        return local.read_cifar10_split(data_dir, split, limit)
    return local.read_cifar100_split(data_dir, split, limit)


def load_dataset(
    name: str = "digits",
    *,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
) -> Dataset:
    """Loads one split of a data set as normalised float32 NHWC images and int32 labels.

    Args:
      name: one of ``DATASETS``: ``"digits"`` (8x8x1, bundled with scikit-learn),
        ``"fashion_mnist"`` (28x28x1), ``"cifar10"`` (32x32x3), ``"cifar100"`` (32x32x3,
        fine labels).
      split: ``"train"`` or ``"test"``.
      data_dir: for the non-digits sets, a directory of the standard distribution
        files (IDX for Fashion-MNIST, binary for CIFAR; see :mod:`jnas.data.local`);
        ``None`` reads a prepared tensorflow-datasets copy instead. Ignored for digits,
        which needs no files.
      limit: keep only the first ``limit`` examples (fast tests and demos); positive.

    Returns:
      A :class:`Dataset`, images normalised with the set's fixed per-channel constants.

    Raises:
      DataError: unknown name or split, non-positive limit, a missing or corrupt file,
        or no prepared tensorflow-datasets copy; the message is one line.
    """
    if name not in _SPECS:
        raise DataError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    if split not in SPLITS:
        raise DataError(f"dataset {name!r}: unknown split {split!r} (expected 'train' or 'test')")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0
    ):
        raise DataError(f"dataset {name!r}: limit must be a positive integer, got {limit!r}")
    spec = _SPECS[name]
    if name == "digits":
        pixels, labels = _load_digits(split)
        pixels, labels = pixels[:limit], labels[:limit]
        max_pixel = 16.0
    elif data_dir is None:
        pixels, labels = _load_tfds(name, split, limit, spec)
        max_pixel = 255.0
    else:
        pixels, labels = _load_local(name, split, data_dir, limit)
        max_pixel = 255.0
        if pixels.shape[1:] != spec.image_shape:
            raise DataError(
                f"{data_dir}: {name} {split} images have shape {pixels.shape[1:]}, "
                f"expected {spec.image_shape}"
            )
    labels = np.asarray(labels, np.int32)
    bad = np.flatnonzero((labels < 0) | (labels >= spec.num_classes))
    if bad.size:
        where = data_dir if data_dir is not None and name != "digits" else "tfds"
        raise DataError(
            f"{where}: {name} {split} example {bad[0]} has label {labels[bad[0]]} outside "
            f"0..{spec.num_classes - 1}"
        )
    images = _normalise(pixels, max_pixel, spec)
    images.flags.writeable = False
    labels.flags.writeable = False
    return Dataset(
        name=name,
        images=images,
        labels=labels,
        num_classes=spec.num_classes,
        mean=spec.mean,
        std=spec.std,
    )
