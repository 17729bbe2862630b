"""Tests of jnas.data: loaders (digits, IDX, CIFAR binary, tfds) and the bi-level batches."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from jnas.data import DATASETS, BilevelBatches, DataError, Dataset, load_dataset
from jnas.data import datasets as datasets_mod
from jnas.data import local

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    array = np.asarray(array, np.uint8)
    if magic is None:
        magic = 0x0800 + array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_idx_split(root: Path, prefix: str, images, labels, gz: bool) -> None:
    write(root / f"{prefix}-images-idx3-ubyte", idx_bytes(images), gz)
    write(root / f"{prefix}-labels-idx1-ubyte", idx_bytes(labels), gz)


def cifar_bytes(images_hwc: np.ndarray, labels: np.ndarray, coarse=None) -> bytes:
    """Records as the CIFAR binary files store them: label byte(s) then CHW pixels."""
    chw = images_hwc.transpose(0, 3, 1, 2).reshape(len(labels), -1)
    cols = [labels[:, None]] if coarse is None else [coarse[:, None], labels[:, None]]
    return np.concatenate(cols + [chw], axis=1).astype(np.uint8).tobytes()


def random_images(rng, n, shape):
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def raw_pixels(dataset: Dataset, max_pixel=255.0) -> np.ndarray:
    """Undoes the normalisation, back to integer pixels."""
    x = dataset.images * np.asarray(dataset.std, np.float32) + np.asarray(dataset.mean, np.float32)
    return np.rint(x * max_pixel).astype(np.int64)


# ---------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_split():
    train = load_dataset("digits")
    test = load_dataset("digits", split="test")
    assert train.images.shape == (1437, 8, 8, 1) and test.images.shape == (360, 8, 8, 1)
    assert train.images.dtype == np.float32 and train.labels.dtype == np.int32
    assert train.image_shape == (8, 8, 1) and train.num_classes == 10 and len(train) == 1437
    assert set(np.unique(train.labels)) == set(range(10))
    assert test.labels.min() >= 0 and test.labels.max() <= 9
    # Normalised with the train split's statistics.
    np.testing.assert_allclose(train.images.mean(axis=(0, 1, 2)), [0.0], atol=1e-5)
    np.testing.assert_allclose(train.images.std(axis=(0, 1, 2)), [1.0], atol=1e-5)
    # Disjoint: no test image (with its label) appears in train... digits has a few exact
    # duplicates, so compare the split indices instead.
    _, _, perm = datasets_mod._digits_raw()
    assert len(set(perm[:1437]) & set(perm[1437:])) == 0 and len(set(perm)) == 1797
    # Deterministic: a second load gives identical arrays.
    again = load_dataset("digits")
    np.testing.assert_array_equal(again.images, train.images)
    np.testing.assert_array_equal(again.labels, train.labels)
    # Exactly the sklearn images in the fixed-permutation order.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(1797)
    np.testing.assert_array_equal(raw_pixels(test, 16.0)[..., 0], bunch.images[order[1437:]])
    np.testing.assert_array_equal(test.labels, bunch.target[order[1437:]])


def test_digits_constants_match_recomputed_statistics():
    from sklearn.datasets import load_digits

    images = load_digits().images / 16.0
    train = images[np.random.default_rng(0).permutation(len(images))[:1437]]
    np.testing.assert_allclose(datasets_mod.DIGITS_MEAN, train.mean(), rtol=1e-6)
    np.testing.assert_allclose(datasets_mod.DIGITS_STD, train.std(), rtol=1e-6)


def test_limit_and_read_only():
    d = load_dataset("digits", limit=5)
    assert d.images.shape == (5, 8, 8, 1)
    np.testing.assert_array_equal(d.images, load_dataset("digits").images[:5])
    with pytest.raises(ValueError):
        d.images[0, 0, 0, 0] = 1.0


# ---------------------------------------------------------------------------- bad arguments


def test_unknown_name_lists_known_names():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'") as e:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(e.value)


@pytest.mark.parametrize("split", ["val", "validation", "", "TRAIN"])
def test_bad_split(split):
    with pytest.raises(DataError, match="unknown split"):
        load_dataset("digits", split=split)


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_bad_limit(limit):
    with pytest.raises(DataError, match="limit must be a positive integer"):
        load_dataset("digits", limit=limit)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


# ---------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(1)
    train_x, test_x = random_images(rng, 7, (28, 28)), random_images(rng, 3, (28, 28))
    train_y, test_y = rng.integers(0, 10, 7), rng.integers(0, 10, 3)
    write_idx_split(tmp_path, "train", train_x, train_y, gz)
    write_idx_split(tmp_path, "t10k", test_x, test_y, gz)

    x, y = local.read_idx_split(tmp_path, "test")
    assert x.shape == (3, 28, 28, 1) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[..., 0], test_x)
    np.testing.assert_array_equal(y, test_y)

    d = load_dataset("fashion_mnist", data_dir=str(tmp_path))
    assert d.images.shape == (7, 28, 28, 1) and d.images.dtype == np.float32
    assert d.labels.dtype == np.int32 and d.num_classes == 10
    np.testing.assert_array_equal(raw_pixels(d)[..., 0], train_x)
    np.testing.assert_array_equal(d.labels, train_y)
    expected = (train_x[0, 0, 0] / 255 - 0.2860) / 0.3530
    np.testing.assert_allclose(d.images[0, 0, 0, 0], expected, rtol=1e-6)

    limited = load_dataset("fashion_mnist", data_dir=tmp_path, limit=4)
    np.testing.assert_array_equal(limited.images, d.images[:4])


def _valid_idx_dir(tmp_path: Path, gz=False) -> Path:
    rng = np.random.default_rng(2)
    for prefix in ("train", "t10k"):
        images, labels = random_images(rng, 4, (28, 28)), rng.integers(0, 10, 4)
        write_idx_split(tmp_path, prefix, images, labels, gz)
    return tmp_path


def test_idx_wrong_magic(tmp_path):
    root = _valid_idx_dir(tmp_path)
    write(root / "train-images-idx3-ubyte", idx_bytes(np.zeros((4, 28, 28)), magic=2049))
    message = r"train-images-idx3-ubyte: wrong magic number 2049 \(expected 2051\)"
    with pytest.raises(DataError, match=message):
        load_dataset("fashion_mnist", data_dir=root)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_truncated_body(tmp_path, gz):
    root = _valid_idx_dir(tmp_path, gz)
    data = idx_bytes(np.zeros((4, 28, 28)))[:-10]
    path = write(root / "t10k-images-idx3-ubyte", data, gz)
    with pytest.raises(DataError, match="truncated body") as e:
        load_dataset("fashion_mnist", split="test", data_dir=root)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_idx_truncated_gzip_stream(tmp_path):
    root = _valid_idx_dir(tmp_path, gz=True)
    path = root / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: corrupt gzip data"):
        load_dataset("fashion_mnist", data_dir=root)


def test_idx_count_mismatch(tmp_path):
    root = _valid_idx_dir(tmp_path)
    write(root / "train-labels-idx1-ubyte", idx_bytes(np.zeros(5)))
    with pytest.raises(DataError, match="4 images but train-labels-idx1-ubyte has 5 labels"):
        load_dataset("fashion_mnist", data_dir=root)


def test_idx_label_out_of_range(tmp_path):
    root = _valid_idx_dir(tmp_path)
    write(root / "train-labels-idx1-ubyte", idx_bytes(np.array([1, 2, 10, 3])))
    with pytest.raises(DataError, match="example 2 has label 10 outside 0..9"):
        load_dataset("fashion_mnist", data_dir=root)


def test_idx_missing_file_and_dir(tmp_path):
    root = _valid_idx_dir(tmp_path)
    os.remove(root / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*missing file"):
        load_dataset("fashion_mnist", split="test", data_dir=root)
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"{missing}: data directory does not exist"):
        load_dataset("fashion_mnist", data_dir=missing)
    with pytest.raises(DataError, match="not a directory"):
        load_dataset("fashion_mnist", data_dir=root / "train-images-idx3-ubyte")


# ---------------------------------------------------------------------------- CIFAR binary


def test_cifar10_round_trip_and_layout(tmp_path):
    rng = np.random.default_rng(3)
    sub = tmp_path / "cifar-10-batches-bin"  # the official tarball's layout
    sub.mkdir()
    per_file = [2, 3, 1, 2, 2]
    all_x, all_y = [], []
    for i, n in enumerate(per_file, start=1):
        x, y = random_images(rng, n, (32, 32, 3)), rng.integers(0, 10, n)
        (sub / f"data_batch_{i}.bin").write_bytes(cifar_bytes(x, y))
        all_x.append(x)
        all_y.append(y)
    test_x, test_y = random_images(rng, 2, (32, 32, 3)), np.array([9, 0])
    (sub / "test_batch.bin").write_bytes(cifar_bytes(test_x, test_y))

    # CHW -> HWC by a known pixel: the byte at channel 2 (blue), row 5, column 7 of record 0.
    record = (sub / "test_batch.bin").read_bytes()[: 1 + 3072]
    x, y = local.read_cifar10_split(tmp_path, "test")
    assert x.shape == (2, 32, 32, 3) and x[0, 5, 7, 2] == record[1 + 2 * 1024 + 5 * 32 + 7]
    np.testing.assert_array_equal(x, test_x)
    np.testing.assert_array_equal(y, test_y)

    d = load_dataset("cifar10", data_dir=tmp_path)
    assert d.images.shape == (10, 32, 32, 3) and d.images.dtype == np.float32
    assert d.num_classes == 10
    np.testing.assert_array_equal(raw_pixels(d), np.concatenate(all_x))
    np.testing.assert_array_equal(d.labels, np.concatenate(all_y))
    # limit crosses file boundaries and reads in order.
    limited = load_dataset("cifar10", data_dir=sub, limit=6)
    np.testing.assert_array_equal(limited.images, d.images[:6])


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(4)
    x = random_images(rng, 3, (32, 32, 3))
    fine, coarse = np.array([99, 0, 57]), np.array([19, 0, 3])
    (tmp_path / "train.bin").write_bytes(cifar_bytes(x, fine, coarse))
    (tmp_path / "test.bin").write_bytes(cifar_bytes(x[:1], fine[:1], coarse[:1]))
    d = load_dataset("cifar100", data_dir=tmp_path)
    assert d.num_classes == 100 and d.image_shape == (32, 32, 3)
    np.testing.assert_array_equal(d.labels, fine)
    np.testing.assert_array_equal(raw_pixels(d), x)
    assert raw_pixels(d)[2, 31, 0, 1] == x[2, 31, 0, 1]


def test_cifar_truncated_bad_label_missing(tmp_path):
    rng = np.random.default_rng(5)
    x = random_images(rng, 2, (32, 32, 3))
    (tmp_path / "test.bin").write_bytes(cifar_bytes(x, np.array([1, 2]), np.array([1, 2]))[:-1])
    (tmp_path / "train.bin").write_bytes(cifar_bytes(x, np.array([1, 100]), np.array([1, 2])))
    message = r"test\.bin: truncated \(6147 bytes is not a multiple of the 3074-byte record\)"
    with pytest.raises(DataError, match=message):
        load_dataset("cifar100", split="test", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"train\.bin: record 1 has label 100 outside 0\.\.99"):
        load_dataset("cifar100", data_dir=tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(cifar_bytes(x, np.array([3, 12])))
    with pytest.raises(DataError, match=r"test_batch\.bin: record 1 has label 12 outside 0\.\.9"):
        load_dataset("cifar10", split="test", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"data_batch_1\.bin: missing file"):
        load_dataset("cifar10", data_dir=tmp_path)


# ---------------------------------------------------------------------------- tfds (mocked)


@pytest.mark.parametrize("name, shape", [("fashion_mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_data_source_mocked(name, shape):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        d = load_dataset(name, split="test")
        limited = load_dataset(name, split="train", limit=5)
    assert d.images.shape == (12, *shape) and d.images.dtype == np.float32
    assert d.labels.shape == (12,) and d.labels.dtype == np.int32
    assert d.labels.min() >= 0 and d.labels.max() < 10
    assert limited.images.shape == (5, *shape)
    # Pixels came through as integers 0..255, normalised with the set's constants.
    scaled = (d.images * np.asarray(d.std, np.float32) + np.asarray(d.mean, np.float32)) * 255
    np.testing.assert_allclose(scaled, np.rint(scaled), atol=1e-3)
    assert scaled.min() > -0.01 and scaled.max() < 255.01


def test_tfds_unprepared_is_data_error(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    real = tfds.data_source

    def data_source(name, **kwargs):  # an empty tfds data dir: nothing is prepared there
        return real(name, data_dir=str(tmp_path), **kwargs)

    monkeypatch.setattr(tfds, "data_source", data_source)
    with pytest.raises(DataError, match="no prepared copy.*--data-dir") as e:
        load_dataset("fashion_mnist")
    assert "\n" not in str(e.value)
    assert not any(tmp_path.rglob("*.array_record*"))  # nothing was downloaded or built


# ---------------------------------------------------------------------------- real Fashion-MNIST


@pytest.mark.skipif(
    not FASHION_DIR.is_dir(),
    reason=f"{FASHION_DIR} absent (Debian package dataset-fashion-mnist; installed in CI)",
)
def test_real_fashion_mnist():
    train = load_dataset("fashion_mnist", data_dir=FASHION_DIR)
    test = load_dataset("fashion_mnist", split="test", data_dir=FASHION_DIR)
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.num_classes == 10
    np.testing.assert_array_equal(np.bincount(train.labels), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(test.labels), np.full(10, 1000))
    assert abs(float(train.images.mean())) < 0.01 and abs(float(train.images.std()) - 1) < 0.01


# ---------------------------------------------------------------------------- BilevelBatches


def indexed_dataset(n=50, hw=8, c=3):
    """Image i is filled with the value i, so batches reveal which images they hold."""
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, hw, hw, c))
    return Dataset("indexed", np.ascontiguousarray(images), np.arange(n, dtype=np.int32) % 10, 10)


def ids(x):
    return x[:, 0, 0, 0].astype(int)


def collect(batches, epoch, start_step=0):
    return list(batches.epoch(epoch, start_step=start_step))


def test_bilevel_halves_disjoint_and_cover():
    data = indexed_dataset(51)
    b = BilevelBatches(data, batch_size=8, seed=3)
    assert b.steps_per_epoch == 25 // 8 == 3
    steps = collect(b, 0)
    assert len(steps) == 3
    for tx, ty, vx, vy in steps:
        assert tx.shape == vx.shape == (8, 8, 8, 3) and tx.dtype == vx.dtype == np.float32
        assert ty.shape == vy.shape == (8,) and ty.dtype == vy.dtype == np.int32
        np.testing.assert_array_equal(ty, ids(tx) % 10)  # labels travel with their images
        np.testing.assert_array_equal(vy, ids(vx) % 10)
    train = np.concatenate([ids(s[0]) for s in steps])
    val = np.concatenate([ids(s[2]) for s in steps])
    assert len(set(train)) == len(set(val)) == 3 * 8
    assert not set(train) & set(val)
    assert set(train) <= set(b.train_indices) and set(val) <= set(b.val_indices)
    assert not set(b.train_indices) & set(b.val_indices)
    # Every epoch draws from the same two halves, in a new order.
    later = collect(b, 1)
    assert set(np.concatenate([ids(s[0]) for s in later])) <= set(b.train_indices)
    assert not all(np.array_equal(a[0], c[0]) for a, c in zip(steps, later))


def test_bilevel_deterministic_and_seeded():
    data = indexed_dataset()
    first = collect(BilevelBatches(data, 4, seed=7), 2)
    second = collect(BilevelBatches(data, 4, seed=7), 2)
    other = collect(BilevelBatches(data, 4, seed=8), 2)
    for a, b in zip(first, second):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))


@pytest.mark.parametrize("augment", [False, True])
def test_bilevel_resume_equals_tail(augment):
    b = BilevelBatches(indexed_dataset(), 4, seed=1, augment=augment)
    full = collect(b, 3)
    tail = collect(BilevelBatches(indexed_dataset(), 4, seed=1, augment=augment), 3, start_step=4)
    assert len(tail) == b.steps_per_epoch - 4 == 2
    for a, c in zip(full[4:], tail):
        for u, v in zip(a, c):
            np.testing.assert_array_equal(u, v)
    assert collect(b, 3, start_step=b.steps_per_epoch) == []


def test_bilevel_augment():
    data = load_dataset("digits", limit=64)
    plain = collect(BilevelBatches(data, 8, seed=0), 0)
    aug = collect(BilevelBatches(data, 8, seed=0, augment=True), 0)
    again = collect(BilevelBatches(data, 8, seed=0, augment=True), 0)
    for p, a, g in zip(plain, aug, again):
        assert a[0].shape == p[0].shape and a[2].shape == p[2].shape and a[0].dtype == np.float32
        np.testing.assert_array_equal(a[1], p[1])  # labels untouched
        for u, v in zip(a, g):
            np.testing.assert_array_equal(u, v)
    assert not all(np.array_equal(p[0], a[0]) for p, a in zip(plain, aug))
    # Each augmented image is a crop (padding = black) of its image, maybe flipped.
    black = -np.float32(datasets_mod.DIGITS_MEAN) / np.float32(datasets_mod.DIGITS_STD)
    padded = np.pad(plain[0][0], ((0, 0), (4, 4), (4, 4), (0, 0)), constant_values=black)
    for img, src in zip(aug[0][0], padded):
        crops = [src[dy : dy + 8, dx : dx + 8] for dy in range(9) for dx in range(9)]
        assert any(np.array_equal(img, c) or np.array_equal(img, c[:, ::-1]) for c in crops)


def test_bilevel_bad_arguments():
    data = indexed_dataset(20)
    with pytest.raises(DataError, match="too small for batch_size 11"):
        BilevelBatches(data, 11, seed=0)
    for bad in (0, -1, 2.0):
        with pytest.raises(DataError, match="batch_size must be an integer >= 1"):
            BilevelBatches(data, bad, seed=0)
    with pytest.raises(DataError, match="seed must be"):
        BilevelBatches(data, 2, seed=-1)
    b = BilevelBatches(data, 2, seed=0)
    with pytest.raises(DataError, match="start_step 6 is past the end"):
        b.epoch(0, start_step=6)
    with pytest.raises(DataError, match="epoch must be"):
        b.epoch(-1)


def test_augment_batch_flips_and_crops():
    from jnas.data import augment_batch

    images = np.random.default_rng(0).random((32, 6, 6, 2), dtype=np.float32)
    out = augment_batch(images, np.random.default_rng(1), padding=0)
    flipped = [np.array_equal(o, x[:, ::-1]) for o, x in zip(out, images)]
    kept = [np.array_equal(o, x) for o, x in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    out = augment_batch(images, np.random.default_rng(1), pad_value=np.array([-1.0, -2.0]))
    assert out.shape == images.shape and out.dtype == np.float32
    border = (out == -1.0) | (out == -2.0)
    assert border.any() and np.all(out[border[..., 0], 0] == -1.0)  # per-channel fill


def test_bilevel_augment_varies_with_step_and_epoch():
    # All images identical: any difference between batches comes from the augmentation.
    image = np.arange(64, dtype=np.float32).reshape(1, 8, 8, 1)
    data = Dataset("same", np.repeat(image, 16, axis=0), np.zeros(16, np.int32), 10)
    b = BilevelBatches(data, 4, seed=0, augment=True)
    e0, e1 = collect(b, 0), collect(b, 1)
    assert not np.array_equal(e0[0][0], e0[1][0])  # step 0 vs step 1
    assert not np.array_equal(e0[0][0], e1[0][0])  # epoch 0 vs epoch 1
    assert not np.array_equal(e0[0][0], e0[0][2])  # weight half vs architecture half
