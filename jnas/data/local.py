"""Readers for the standard distribution files of Fashion-MNIST (IDX) and CIFAR (binary).

These read the files exactly as their authors publish them, so a machine without
internet (or without a prepared tensorflow-datasets copy) can still train on the real
data: the IDX files of (Fashion-)MNIST, gzipped or plain, and the *binary* CIFAR
versions. The CIFAR python versions are pickles and are deliberately not supported:
nothing here unpickles anything.

Every reader returns raw ``uint8`` arrays (images NHWC, labels ``(N,)``) and checks what
it reads: magic numbers, dimensions, body lengths, record sizes and label ranges. Every
problem becomes a :class:`~jnas.data.errors.DataError` whose one-line message names the
file or directory and the problem.

References:
  LeCun et al., "The MNIST database", IDX format: http://yann.lecun.com/exdb/mnist/
  Krizhevsky, "Learning Multiple Layers of Features from Tiny Images" (2009), binary
  version: https://www.cs.toronto.edu/~kriz/cifar.html
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from jnas.data.errors import DataError

# IDX magic numbers: two zero bytes, the element type (0x08 = uint8), the rank.
IDX_IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dims (N, H, W)
IDX_LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dim (N,)

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

CIFAR_IMAGE_BYTES = 3 * 32 * 32  # one record's image: CHW, channel planes R, G, B

CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
CIFAR10_SUBDIR = "cifar-10-batches-bin"

CIFAR100_FILES = {"train": ("train.bin",), "test": ("test.bin",)}
CIFAR100_SUBDIR = "cifar-100-binary"


def _check_dir(data_dir: str | os.PathLike) -> Path:
    path = Path(data_dir)
    if not path.exists():
        raise DataError(f"{path}: data directory does not exist")
    if not path.is_dir():
        raise DataError(f"{path}: not a directory (expected a directory of data files)")
    return path


def _read_bytes(path: Path) -> bytes:
    """The file's contents, decompressed when its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: missing file") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip data ({e or type(e).__name__})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None


def read_idx(path: str | os.PathLike, *, magic: int) -> np.ndarray:
    """Reads one uint8 IDX file (plain, or gzip when the name ends in ``.gz``).

    Args:
      path: the file.
      magic: the expected magic number, e.g. ``IDX_IMAGES_MAGIC`` (2051) for
        ``(N, H, W)`` images or ``IDX_LABELS_MAGIC`` (2049) for ``(N,)`` labels. It
        fixes both the element type (uint8) and the rank.

    Returns:
      A read-only ``uint8`` array with the shape the header gives.

    Raises:
      DataError: missing or unreadable file, corrupt gzip data, wrong magic number,
        truncated header, or a body shorter or longer than the header's dimensions.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path}: wrong magic number {found} (expected {magic})")
    ndim = data[3]
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"{path}: truncated IDX header ({len(data)} of {header_len} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    body = len(data) - header_len
    if body < expected:
        raise DataError(
            f"{path}: truncated body ({body} bytes, header dims {dims} need {expected})"
        )
    if body > expected:
        raise DataError(
            f"{path}: {body - expected} unexpected trailing bytes after the body of dims {dims}"
        )
    return np.frombuffer(data, np.uint8, count=expected, offset=header_len).reshape(dims)


def _find_idx(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise DataError(f"{data_dir / stem}[.gz]: missing file (expected {stem} or {stem}.gz)")


def read_idx_split(data_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads the (Fashion-)MNIST IDX image and label files of one split.

    Args:
      data_dir: directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or ``.gz``
        (the plain file wins when both exist).
      split: ``"train"`` or ``"test"`` (the ``t10k`` files).

    Returns:
      ``(images, labels)``: ``uint8`` images ``(N, H, W, 1)`` and ``uint8`` labels ``(N,)``.

    Raises:
      DataError: missing directory or file, any :func:`read_idx` problem, or image and
        label files whose counts disagree.
    """
    root = _check_dir(data_dir)
    if split not in IDX_FILES:
        raise DataError(f"unknown split {split!r} (expected one of {sorted(IDX_FILES)})")
    image_stem, label_stem = IDX_FILES[split]
    image_path, label_path = _find_idx(root, image_stem), _find_idx(root, label_stem)
    images = read_idx(image_path, magic=IDX_IMAGES_MAGIC)
    labels = read_idx(label_path, magic=IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(
            f"{image_path}: {len(images)} images but {label_path.name} has {len(labels)} labels"
        )
    return images[..., None], labels


def _cifar_record_count(path: Path, record_bytes: int) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: missing file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    if size == 0:
        raise DataError(f"{path}: empty file")
    if size % record_bytes:
        raise DataError(
            f"{path}: truncated ({size} bytes is not a multiple of the {record_bytes}-byte record)"
        )
    return size // record_bytes


def read_cifar_binary(
    path: str | os.PathLike, *, label_bytes: int, num_classes: int, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR binary file: records of label byte(s) followed by a 32x32x3 CHW image.

    Args:
      path: the ``.bin`` file.
      label_bytes: 1 for CIFAR-10 (the label), 2 for CIFAR-100 (coarse, fine); the last
        label byte is the one returned (CIFAR-100: the fine label).
      num_classes: labels must lie in ``0..num_classes-1``.
      limit: read only the first ``limit`` records (the whole file is still size-checked).

    Returns:
      ``(images, labels)``: ``uint8`` images ``(N, 32, 32, 3)`` (HWC) and ``uint8`` labels.

    Raises:
      DataError: missing, unreadable, empty or truncated file (size not a multiple of
        the record size), or a label out of range.
    """
    path = Path(path)
    record_bytes = label_bytes + CIFAR_IMAGE_BYTES
    count = _cifar_record_count(path, record_bytes)
    if limit is not None:
        count = min(count, limit)
    try:
        with open(path, "rb") as f:
            buf = f.read(count * record_bytes)
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    if len(buf) != count * record_bytes:  # the file shrank after the size check
        raise DataError(f"{path}: truncated while reading")
    records = np.frombuffer(buf, np.uint8).reshape(count, record_bytes)
    labels = records[:, label_bytes - 1].copy()
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{path}: record {i} has label {labels[i]} outside 0..{num_classes - 1}"
        )
    images = records[:, label_bytes:].reshape(count, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _resolve_cifar_dir(data_dir: str | os.PathLike, files: Sequence[str], subdir: str) -> Path:
    """``data_dir`` itself when it holds the files, else its ``subdir`` when that exists."""
    root = _check_dir(data_dir)
    if not (root / files[0]).exists() and (root / subdir).is_dir():
        return root / subdir
    return root


def _read_cifar_files(
    data_dir: str | os.PathLike,
    files: Sequence[str],
    subdir: str,
    *,
    label_bytes: int,
    num_classes: int,
    limit: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    root = _resolve_cifar_dir(data_dir, files, subdir)
    paths = [root / name for name in files]
    record_bytes = label_bytes + CIFAR_IMAGE_BYTES
    for path in paths:  # every expected file must be present and whole, limit or not
        _cifar_record_count(path, record_bytes)
    images, labels, remaining = [], [], limit
    for path in paths:
        x, y = read_cifar_binary(
            path, label_bytes=label_bytes, num_classes=num_classes, limit=remaining
        )
        images.append(x)
        labels.append(y)
        if remaining is not None:
            remaining -= len(y)
            if remaining <= 0:
                break
    return np.concatenate(images), np.concatenate(labels)


def _check_split(split: str, files: dict) -> None:
    if split not in files:
        raise DataError(f"unknown split {split!r} (expected one of {sorted(files)})")


def read_cifar10_split(
    data_dir: str | os.PathLike, split: str, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reads the CIFAR-10 binary files of one split.

    Args:
      data_dir: directory holding ``data_batch_1.bin`` .. ``data_batch_5.bin`` and
        ``test_batch.bin``, directly or inside a ``cifar-10-batches-bin/`` subdirectory
        (the layout of the official ``cifar-10-binary.tar.gz``).
      split: ``"train"`` (the five data batches, in order) or ``"test"``.
      limit: keep only the first ``limit`` images.

    Returns:
      ``(images, labels)``: ``uint8`` ``(N, 32, 32, 3)`` and ``uint8`` ``(N,)`` in 0..9.

    Raises:
      DataError: see :func:`read_cifar_binary`; also a missing directory or file.
    """
    _check_split(split, CIFAR10_FILES)
    return _read_cifar_files(
        data_dir, CIFAR10_FILES[split], CIFAR10_SUBDIR, label_bytes=1, num_classes=10, limit=limit
    )


def read_cifar100_split(
    data_dir: str | os.PathLike, split: str, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reads the CIFAR-100 binary file of one split, with its fine (100-class) labels.

    Args:
      data_dir: directory holding ``train.bin`` and ``test.bin``, directly or inside a
        ``cifar-100-binary/`` subdirectory (the layout of ``cifar-100-binary.tar.gz``).
      split: ``"train"`` or ``"test"``.
      limit: keep only the first ``limit`` images.

    Returns:
      ``(images, labels)``: ``uint8`` ``(N, 32, 32, 3)`` and ``uint8`` ``(N,)`` in 0..99.

    Raises:
      DataError: see :func:`read_cifar_binary`; also a missing directory or file.
    """
    _check_split(split, CIFAR100_FILES)
    return _read_cifar_files(
        data_dir,
        CIFAR100_FILES[split],
        CIFAR100_SUBDIR,
        label_bytes=2,
        num_classes=100,
        limit=limit,
    )
