"""Training a genotype's evaluation network from scratch: the DARTS evaluation protocol.

As the DARTS reference ``cnn/train.py`` (CIFAR-10): SGD with momentum 0.9, learning
rate 0.025 annealed to 0 by a per-epoch cosine (``CosineAnnealingLR(epochs)``, stepped
once per epoch), weight decay 3e-4 on every parameter, gradient-norm clipping at 5,
batch 96, 600 epochs; the auxiliary head's loss weighs 0.4; drop path probability
``drop_path * epoch / epochs``; augmentation: random crop (padding 4) + horizontal flip,
then cutout 16 (a zeroed square, centre uniform over the image, clipped at the border,
on the normalised image). Evaluation uses the BatchNorm running statistics.

Every random draw is a pure function of the seed: the epoch's order and augmentation
through ``np.random.default_rng([seed, stream, epoch, step])``, drop path and noise
through ``jax.random.fold_in(key(seed), step)``. A checkpoint (orbax) is written after
every epoch; a run restarted on the same output directory resumes from the last one
and repeats what an uninterrupted run would have done.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jnas import data as jdata
from jnas import xla_options
from jnas.evaluation import network as enet
from jnas.spaces import darts as space

_ORDER_STREAM = 0x7A1
_AUGMENT_STREAM = 0x7A2


def _write_json(path: Path, payload) -> None:
    """Through a temporary file and a rename: a crash never leaves a torn file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


class CheckpointError(Exception):
    """A checkpoint directory that does not belong to this run or cannot be read."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A from-scratch training run; every field goes into ``result.json``'s ``config``.

    Defaults are DARTS' CIFAR-10 protocol except ``auxiliary``, ``cutout`` (off unless
    asked for, as in the reference's flags) and the data set.
    """

    genotype: str = "DARTS_V2"
    dataset: str = "digits"
    data_dir: str | None = None
    layers: int = 20
    channels: int = 36
    auxiliary: bool = False
    auxiliary_weight: float = 0.4
    cutout: bool = False
    cutout_length: int = 16
    drop_path: float = 0.2
    epochs: int = 600
    batch_size: int = 96
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    seed: int = 0
    limit: int | None = None
    steps_per_epoch: int | None = None
    eval_batch_size: int = 256

    def __post_init__(self):
        if self.dataset not in jdata.DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known: {', '.join(jdata.DATASETS)}")
        for name in ("layers", "channels", "epochs", "batch_size", "cutout_length", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("limit", "steps_per_epoch"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")
        for name in ("lr", "weight_decay", "grad_clip", "auxiliary_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if self.channels % 2:
            raise ValueError(f"channels must be even, got {self.channels}")


def lr_at_epoch(config: TrainConfig, epoch: int) -> float:
    """``CosineAnnealingLR(T_max=epochs, eta_min=0)`` at ``epoch``."""
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * epoch / config.epochs))


def cutout(images: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Zeroes one ``length`` x ``length`` square per image (DARTS' Cutout, on normalised images)."""
    b, h, w, _ = images.shape
    ys, xs = rng.integers(0, h, size=b), rng.integers(0, w, size=b)
    rows, cols = np.arange(h)[None, :], np.arange(w)[None, :]
    y1, y2 = np.clip(ys - length // 2, 0, h), np.clip(ys + length // 2, 0, h)
    x1, x2 = np.clip(xs - length // 2, 0, w), np.clip(xs + length // 2, 0, w)
    in_y = (rows >= y1[:, None]) & (rows < y2[:, None])
    in_x = (cols >= x1[:, None]) & (cols < x2[:, None])
    mask = ~(in_y[:, :, None] & in_x[:, None, :])
    return images * mask[..., None].astype(images.dtype)


def _crop_padding(height: int) -> int:
    # CIFAR's 4-pixel padding; tiny images (8x8 digits) get proportionally less.
    return 4 if height >= 28 else max(height // 8, 1)


def make_steps(net: enet.EvalNetwork, config: TrainConfig, steps_per_epoch: int):
    """Jittable ``train_step`` and ``eval_step`` and the optimizer."""

    def schedule(step):
        epoch = step // steps_per_epoch
        return 0.5 * config.lr * (1.0 + jnp.cos(jnp.pi * epoch / config.epochs))

    tx = optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum),
    )

    def loss_fn(params, stats, images, labels, key, drop_prob):
        logits, aux, new_stats = net.apply(params, stats, images, train=True, key=key, drop_prob=drop_prob)
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        total = loss
        if aux is not None:
            total = total + config.auxiliary_weight * jnp.mean(
                optax.softmax_cross_entropy_with_integer_labels(aux, labels))
        return total, (loss, logits, new_stats)

    def train_step(state, images, labels, drop_prob):
        params, stats, opt_state, step = state["params"], state["batch_stats"], state["opt_state"], state["step"]
        key = jax.random.fold_in(jax.random.key(config.seed), step)
        (_, (loss, logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, stats, images, labels, key, drop_prob)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": loss, "acc": jnp.mean(jnp.argmax(logits, -1) == labels), "lr": schedule(step)}
        return {"params": params, "batch_stats": new_stats, "opt_state": opt_state, "step": step + 1}, metrics

    def eval_step(params, stats, images, labels, valid):
        logits, _, _ = net.apply(params, stats, images, train=False)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return jnp.sum(losses * valid), jnp.sum(correct * valid)

    return tx, train_step, eval_step


def evaluate(eval_fn, params, stats, dataset, batch_size: int) -> tuple[float, float]:
    """Mean loss and accuracy over ``dataset``; the last batch is padded (masked), so one compile serves all."""
    n = len(dataset)
    total_loss = total_correct = 0.0
    for start in range(0, n, batch_size):
        images = dataset.images[start : start + batch_size]
        labels = dataset.labels[start : start + batch_size]
        valid = np.ones(batch_size, np.float32)
        if len(labels) < batch_size:
            pad = batch_size - len(labels)
            valid[len(labels):] = 0
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
            labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
        loss, correct = eval_fn(params, stats, jnp.asarray(images), jnp.asarray(labels), jnp.asarray(valid))
        total_loss += float(loss)
        total_correct += float(correct)
    return total_loss / n, total_correct / n


def _batches(dataset, config: TrainConfig, epoch: int, steps: int, start_step: int):
    order = np.random.default_rng([config.seed, _ORDER_STREAM, epoch]).permutation(len(dataset))
    pad_value = (-np.asarray(dataset.mean, np.float32) / np.asarray(dataset.std, np.float32)
                 if dataset.mean is not None else np.float32(0))
    padding = _crop_padding(dataset.image_shape[0])
    for step in range(start_step, steps):
        idx = order[step * config.batch_size : (step + 1) * config.batch_size]
        rng = np.random.default_rng([config.seed, _AUGMENT_STREAM, epoch, step])
        images = jdata.augment_batch(dataset.images[idx], rng, pad_value=pad_value, padding=padding)
        if config.cutout:
            images = cutout(images, config.cutout_length, rng)
        yield np.asarray(images, np.float32), np.asarray(dataset.labels[idx], np.int32)


def run_training(config: TrainConfig, out: Path | None = None, *, progress: bool = True,
                 train_set=None, test_set=None) -> dict[str, Any]:
    """Trains ``config.genotype`` from scratch and returns the ``result.json`` payload.

    Args:
      config: the run.
      out: output directory for checkpoints (``out/checkpoints``, one per epoch) and
        ``history.json``; ``None``: no checkpoints. A directory holding checkpoints of
        the same config resumes from the last one.
      progress: tqdm bar on stderr.
      train_set, test_set: already loaded data sets (else loaded from ``config``).

    Raises:
      jnas.spaces.darts.GenotypeError: bad genotype; jnas.data.DataError: bad data;
      CheckpointError: ``out`` holds checkpoints of a different run.
    """
    start_time = time.perf_counter()
    genotype = space.from_name_or_text(config.genotype)
    if train_set is None:
        train_set = jdata.load_dataset(config.dataset, split="train", data_dir=config.data_dir, limit=config.limit)
    if test_set is None:
        test_set = jdata.load_dataset(config.dataset, split="test", data_dir=config.data_dir, limit=config.limit)
    full_steps = len(train_set) // config.batch_size
    if full_steps < 1:
        raise jdata.DataError(f"{len(train_set)} training images are fewer than one batch of {config.batch_size}")
    steps = min(full_steps, config.steps_per_epoch or full_steps)

    _, _, in_channels = train_set.image_shape
    net_config = enet.NetworkConfig(channels=config.channels, layers=config.layers,
                                    num_classes=train_set.num_classes, in_channels=in_channels,
                                    auxiliary=config.auxiliary)
    net = enet.network(genotype, net_config)
    num_params = enet.count_params(genotype, net_config)
    tx, train_step, eval_step = make_steps(net, config, steps)
    params, stats = net.init(jax.random.key(config.seed))
    state = {"params": params, "batch_stats": stats, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    train_fn = xla_options.jit(train_step, donate_argnums=0)
    eval_fn = xla_options.jit(eval_step)

    config_json = dataclasses.asdict(config)
    history: list[dict] = []
    first_epoch = 0
    manager = None
    if out is not None:
        import orbax.checkpoint as ocp

        out = Path(out).resolve()
        meta_path = out / "train_config.json"
        if meta_path.exists():
            saved = json.loads(meta_path.read_text())
            if saved != config_json:
                raise CheckpointError(f"{out} holds checkpoints of a different training run "
                                      f"({meta_path.name} differs); choose another --out")
        else:
            out.mkdir(parents=True, exist_ok=True)
            _write_json(meta_path, config_json)
        manager = ocp.CheckpointManager(out / "checkpoints", options=ocp.CheckpointManagerOptions(max_to_keep=2))
        latest = manager.latest_step()
        if latest is not None:
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
            try:
                state = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
                history = json.loads((out / "history.json").read_text())[:latest]
            except Exception as err:  # orbax reports damage in many ways
                raise CheckpointError(f"cannot resume from {out / 'checkpoints'}: {type(err).__name__}: "
                                      f"{' '.join(str(err).split())[:200]}") from None
            first_epoch = latest

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs * steps, initial=first_epoch * steps, desc="train", unit="step",
                   dynamic_ncols=True)
    for epoch in range(first_epoch, config.epochs):
        epoch_start = time.perf_counter()
        drop_prob = jnp.asarray(config.drop_path * epoch / config.epochs, jnp.float32)
        losses, accs = [], []
        for images, labels in _batches(train_set, config, epoch, steps, 0):
            state, metrics = train_fn(state, jnp.asarray(images), jnp.asarray(labels), drop_prob)
            metrics = jax.device_get(metrics)
            losses.append(float(metrics["loss"]))
            accs.append(float(metrics["acc"]))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.3f}")
        test_loss, test_acc = evaluate(eval_fn, state["params"], state["batch_stats"], test_set,
                                       config.eval_batch_size)
        history.append({
            "epoch": epoch,
            "lr": lr_at_epoch(config, epoch),
            "drop_prob": float(drop_prob),
            "train_loss": float(np.mean(losses)),
            "train_acc": float(np.mean(accs)),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "seconds": time.perf_counter() - epoch_start,
        })
        if manager is not None:
            manager.save(epoch + 1, args=ocp.args.StandardSave(state))
            manager.wait_until_finished()
            _write_json(out / "history.json", history)
    if bar is not None:
        bar.close()
    if manager is not None:
        manager.close()
    last = history[-1] if history else {}
    return {
        "config": config_json,
        "genotype": space.format_genotype(genotype),
        "params": num_params,
        "num_classes": train_set.num_classes,
        "train_images": len(train_set),
        "test_images": len(test_set),
        "steps_per_epoch": steps,
        "test_acc": last.get("test_acc"),
        "test_loss": last.get("test_loss"),
        "history": history,
        "resumed_from_epoch": first_epoch,
        "seconds": time.perf_counter() - start_time,
    }
