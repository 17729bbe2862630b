"""Thin orbax wrappers around a pure search state: atomic, verified, resumable.

A run's checkpoints live in one directory, one numbered sub-directory per saved step
(orbax's :class:`~orbax.checkpoint.CheckpointManager` layout)::

    checkpoints/
      12/                   # the state after 12 steps
        state/              # the arrays (orbax StandardSave: tensorstore/OCDBT)
        meta/metadata       # JSON: kind, config, loop position, history, digests
      16/
      ...

* **What is saved.** ``arrays`` is any pytree of arrays (weights, architecture
  parameters, optimizer states, step counters, a searcher's population); typed PRNG
  keys are stored as their raw ``jax.random.key_data`` and re-wrapped on restore with
  ``jax.random.wrap_key_data`` and the key implementation of the template. ``meta``
  is a JSON object (never a pickle): the loop position, the history so far, anything
  else the caller needs to continue exactly where it stopped.
* **Atomic.** Saves are synchronous; orbax writes each step into a temporary
  directory and renames it into place once complete, so a process killed mid-write
  (even by SIGKILL) leaves only a temporary directory, which is ignored and removed
  the next time the directory is opened. Only then does the oldest checkpoint beyond
  the last ``keep`` go.
* **Verified.** The metadata records a SHA-256 digest of every array (dtype, shape
  and bytes) and of the metadata itself. A checkpoint that orbax cannot read, or whose
  contents do not match their digests (a truncated or flipped file), is reported by
  name and the next older one is tried.
* **Same config.** The metadata holds the run's config; resuming with a different
  one is refused with the differing keys named, before anything is overwritten.
* **Any device count.** The arrays are saved as whole host arrays (``jax.device_get``
  of replicated arrays), so a run saved on 8 devices resumes on 1 or 4.
* **Several processes** (multi-process JAX, :mod:`jnas.parallel`). Every process calls
  :meth:`Checkpoints.save` and :meth:`Checkpoints.restore` alike, with the same
  arrays, because orbax's ``CheckpointManager`` requires it (it keeps the processes in
  step with barriers); only process 0 writes: orbax writes replicated host arrays and
  the metadata from process 0, and jnas writes its manifest and sets damaged
  checkpoints aside there too. Every process must see the same directory (a shared
  file system): orbax's barriers assume it, and so does resuming.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from jnas import parallel

FORMAT_VERSION = 1
DEFAULT_KEEP = 3


class CheckpointError(Exception):
    """A checkpoint directory that cannot be resumed (one-line message)."""


def _is_key(leaf) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def to_saveable(tree):
    """``tree`` with typed PRNG keys replaced by their raw ``key_data`` (uint32 arrays)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_saveable(saved, like):
    """Inverse of :func:`to_saveable`: re-wraps the key leaves of ``like`` with its key impl."""
    return jax.tree.map(
        lambda s, t: jax.random.wrap_key_data(s, impl=jax.random.key_impl(t)) if _is_key(t) else s,
        saved, like,
    )


def array_digest(tree) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes (keys as their raw data)."""
    h = hashlib.sha256()
    leaves, _ = jax.tree_util.tree_flatten_with_path(to_saveable(tree))
    for path, leaf in leaves:
        value = np.asarray(jax.device_get(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(f"|{value.dtype.str}|{value.shape}|".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def _canonical(payload) -> bytes:
    return json.dumps(payload, sort_keys=True, allow_nan=True, separators=(",", ":")).encode()


def json_digest(payload) -> str:
    return hashlib.sha256(_canonical(payload)).hexdigest()


def config_differences(saved: dict, given: dict) -> list[str]:
    """``["key (checkpoint X, now Y)", ...]`` for every key whose value differs."""
    out = []
    for name in sorted(set(saved) | set(given)):
        a, b = saved.get(name, "<absent>"), given.get(name, "<absent>")
        if _canonical(a) != _canonical(b):
            out.append(f"{name} (checkpoint {a!r}, now {b!r})")
    return out


def _sync(what: str) -> None:
    """With several processes, waits until every process has got here."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"jnas.checkpoint: {what}")


def _stderr(message: str) -> None:
    print(f"jnas: {message}", file=sys.stderr, flush=True)


class Restored:
    """A restored checkpoint: ``step``, ``arrays`` (keys re-wrapped), ``meta``, ``path``."""

    def __init__(self, step: int, arrays, meta: dict, path: Path):
        self.step, self.arrays, self.meta, self.path = step, arrays, meta, path


class Checkpoints:
    """The checkpoints of one run in ``directory``, the last ``keep`` kept.

    Args:
      directory: where the numbered checkpoints go (created on the first save).
      kind: what run wrote them (``"search"``, ``"evolve"``, ...); a directory of
        another kind is refused on restore.
      config: the run's config as a JSON-ready dict; stored with every checkpoint and
        compared on restore.
      keep: how many of the newest checkpoints to keep (>= 1).
      log: where the one-line notices go (corrupt checkpoint, fallback); stderr by default.
    """

    def __init__(self, directory, kind: str, config: dict, keep: int = DEFAULT_KEEP,
                 log: Callable[[str], None] = _stderr):
        import orbax.checkpoint as ocp

        if int(keep) < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        # orbax logs every save at INFO and warns about its own defaults; jnas prints its own lines
        logging.getLogger("absl").setLevel(logging.ERROR)
        self.directory = Path(directory).absolute()
        self.kind = kind
        self.config = json.loads(_canonical(config))
        self.keep = int(keep)
        self.log = log
        self._ocp = ocp
        self._manager = None

    # orbax's manager is opened lazily: a run that never saves never creates the directory
    def _open(self):
        if self._manager is None:
            ocp = self._ocp
            options = ocp.CheckpointManagerOptions(
                max_to_keep=None,  # pruned by `save`, after the new checkpoint is verified
                enable_async_checkpointing=False,
                create=True,
                cleanup_tmp_directories=True,
            )
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        return self._manager

    def steps(self) -> list[int]:
        """The steps of the complete (renamed-into-place) checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.is_dir() and p.name.isdigit())

    def path(self, step: int) -> Path:
        return self.directory / str(int(step))

    def save(self, step: int, arrays, meta: dict) -> Path:
        """Saves ``arrays`` and ``meta`` as checkpoint ``step`` (atomically), then prunes to ``keep``.

        Saving a step that already exists replaces nothing and returns its path: the
        state at a given step of a deterministic run is the same. With several
        processes, every process calls it (see the module docstring).
        """
        ocp = self._ocp
        step = int(step)
        manager = self._open()
        if step in manager.all_steps():
            return self.path(step)
        # listed before this save's barriers, so that every process prunes the same steps
        prune = sorted(set(self.steps()) | {step})[: -self.keep]
        host = jax.device_get(to_saveable(arrays))
        payload = json.loads(json.dumps(meta, allow_nan=True))  # plain JSON types, order kept
        record = {
            "format": FORMAT_VERSION,
            "kind": self.kind,
            "step": step,
            "config": self.config,
            "meta": payload,
            "array_digest": array_digest(host),
        }
        record["meta_digest"] = json_digest(record)
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(record)))
        manager.wait_until_finished()
        # The manifest is written last: a checkpoint without one is incomplete. Only then
        # do the oldest go, so `keep` intact ones remain whenever the process dies.
        if parallel.is_primary():
            _write_manifest(self.path(step))
        _sync(f"checkpoint {step} written")  # complete, manifest included, when any process returns
        for old in prune:
            manager.delete(old)
        return self.path(step)

    def _load_record(self, step: int) -> dict:
        path = self.path(step)
        # checked before orbax opens anything, so a damaged file is named, not decoded
        _check_manifest(path)
        meta_file = path / "meta" / "metadata"
        try:
            record = json.loads(meta_file.read_text())
        except (OSError, ValueError) as err:
            raise _Corrupt(f"unreadable metadata ({type(err).__name__})") from None
        if not isinstance(record, dict) or "meta_digest" not in record:
            raise _Corrupt("metadata without a digest")
        claimed = record.pop("meta_digest")
        if json_digest(record) != claimed:
            raise _Corrupt("metadata does not match its digest")
        return record

    def _load_arrays(self, step: int, record: dict, like):
        ocp = self._ocp
        template = jax.tree.map(
            lambda x: ocp.utils.to_shape_dtype_struct(np.asarray(x)), jax.device_get(to_saveable(like)))
        try:
            restored = self._open().restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template)))
            saved = restored.state
        except Exception as err:  # orbax/tensorstore raise many types for damaged files
            raise _Corrupt(f"unreadable arrays ({type(err).__name__})") from None
        if jax.tree.structure(saved) != jax.tree.structure(template):
            raise _Corrupt("array tree has a different structure")
        if array_digest(saved) != record["array_digest"]:
            raise _Corrupt("arrays do not match their digest")
        return saved

    def restore(self, like) -> Restored | None:
        """The newest intact checkpoint, or None if the directory has none at all.

        Args:
          like: a template pytree with the structure, dtypes and shapes of the saved
            ``arrays`` (e.g. a freshly initialised state); typed keys in it say which
            leaves to re-wrap. Or a function ``like(meta) -> template`` of the
            checkpoint's (verified) ``meta``, for runs whose arrays change with their
            phase.

        Raises:
          CheckpointError: the newest intact checkpoint was written by another kind of
            run or another config (naming the differing keys), or every checkpoint is
            damaged.
        """
        steps = self.steps()
        if not steps:
            return None
        damaged = []  # (path, reason), newest first
        for step in reversed(steps):
            path = self.path(step)
            try:
                record = self._load_record(step)
                # the config is checked before any array is read: a different run is
                # refused as such, not reported as damage
                if record.get("kind") != self.kind:
                    raise CheckpointError(f"{self.directory} holds checkpoints of a {record.get('kind')!r} run, "
                                          f"not of {self.kind!r}")
                differences = config_differences(record.get("config", {}), self.config)
                if differences:
                    raise CheckpointError(f"{self.directory} was written with a different config; "
                                          f"differing keys: {'; '.join(differences)}")
                template = _template(like, record["meta"])
                saved = self._load_arrays(step, record, template)
            except _Corrupt as err:
                damaged.append((path, str(err)))
                continue
            if damaged:
                what = "; ".join(f"checkpoint {p} is damaged ({reason})" for p, reason in damaged)
                self.log(f"{what}; falling back to {path}")
                self._set_aside([p for p, _ in damaged])
            arrays = from_saveable(jax.tree.map(lambda x: jax.device_put(np.asarray(x)), saved), template)
            return Restored(step, arrays, record["meta"], path)
        what = ", ".join(f"{p.name} ({reason})" for p, reason in damaged)
        raise CheckpointError(f"no intact checkpoint in {self.directory}: every one is damaged: {what}")

    def _set_aside(self, paths) -> None:
        """Moves damaged checkpoints out of the numbered sequence (kept for inspection, never
        loaded), so the resumed run can save those steps again."""
        self.close()
        if parallel.is_primary():
            for path in paths:
                target = path.with_name(f"damaged-{path.name}")
                suffix = 0
                while target.exists():
                    suffix += 1
                    target = path.with_name(f"damaged-{path.name}-{suffix}")
                path.rename(target)
        _sync("damaged checkpoints set aside")  # before any process lists the steps again

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _Corrupt(Exception):
    pass


def _template(like, meta):
    if not callable(like):
        return like
    try:
        return like(meta)
    except (KeyError, TypeError, ValueError) as err:
        raise _Corrupt(f"metadata that does not describe its arrays ({type(err).__name__})") from None


MANIFEST = "jnas-manifest.json"


def _files(path: Path) -> dict[str, list]:
    out = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file() and MANIFEST not in p.name):
        out[file.relative_to(path).as_posix()] = [file.stat().st_size, hashlib.sha256(file.read_bytes()).hexdigest()]
    return out


def _write_manifest(path: Path) -> None:
    """``path/jnas-manifest.json``: size and SHA-256 of every file of the checkpoint, written
    through a temporary file and a rename."""
    files = _files(path)
    target = path / MANIFEST
    temporary = path / f".{MANIFEST}.tmp"
    with open(temporary, "w") as stream:
        json.dump({"files": files}, stream, indent=1)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, target)


def _check_manifest(path: Path) -> None:
    try:
        expected = json.loads((path / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        raise _Corrupt("incomplete: no manifest") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _Corrupt(f"unreadable manifest ({type(err).__name__})") from None
    found = _files(path)
    for name in sorted(set(expected) | set(found)):
        if name not in found:
            raise _Corrupt(f"{name} is missing")
        if name not in expected:
            continue  # orbax may add bookkeeping files; what was written is what matters
        if found[name][0] != expected[name][0]:
            raise _Corrupt(f"{name} is truncated or extended ({found[name][0]} of {expected[name][0]} bytes)")
        if found[name][1] != expected[name][1]:
            raise _Corrupt(f"{name} does not match its checksum")
