"""jnas.checkpoint: exact round trips, damaged checkpoints, config refusal, keep-last-K."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas import checkpoint
from jnas.search import darts
from jnas.supernet import nb201 as supernet

CONFIG = {"method": "darts", "channels": 2, "seed": 0}


@pytest.fixture(scope="module")
def search_state():
    """A real DARTS state (weights, α, SGD momentum, Adam moments and count, typed key),
    its optimizer states filled with distinct values as after some steps (no step is
    taken: compiling one would dominate these tests)."""
    net = supernet.SupernetConfig(channels=2, cells=1, num_classes=3, in_channels=1, image_size=8)
    search = darts.make_darts(supernet.search_network(net), darts.DartsConfig(), total_steps=4)
    state = search.init(jax.random.key(3))
    rng = np.random.default_rng(0)

    def used(x):
        if jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(rng.normal(size=x.shape), x.dtype)
        return x + 1

    return search, state._replace(w_opt_state=jax.tree.map(used, state.w_opt_state),
                                  a_opt_state=jax.tree.map(used, state.a_opt_state), step=state.step + 1)


def _log():
    lines = []
    return lines, lines.append


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.array_equal(np.asarray(x), np.asarray(y))  # bit for bit (NaN-free here)


def test_round_trip_of_a_search_state_is_exact(tmp_path, search_state):
    search, state = search_state
    meta = {"done": 1, "sums": {"train_loss": [0.1, float("nan")]}, "history": [{"lr": 0.025}]}
    store = checkpoint.Checkpoints(tmp_path / "ck", "search", CONFIG)
    store.save(1, state, meta)
    store.close()

    like = search.init(jax.random.key(99))  # another state of the same shape
    with checkpoint.Checkpoints(tmp_path / "ck", "search", CONFIG) as store:
        restored = store.restore(like)
    assert restored.step == 1 and restored.path == (tmp_path / "ck" / "1").absolute()
    _assert_same(restored.arrays, state)
    assert isinstance(restored.arrays, darts.SearchState)
    # the key comes back typed, with the template's implementation, and draws the same numbers
    assert jax.random.key_impl(restored.arrays.key) == jax.random.key_impl(state.key)
    assert np.array_equal(jax.random.normal(restored.arrays.key, (3,)), jax.random.normal(state.key, (3,)))
    # Adam's moments and count, and the SGD momentum, are all there
    assert optax_counts(restored.arrays.a_opt_state) == optax_counts(state.a_opt_state) == [1]
    assert restored.meta["sums"]["train_loss"][0] == 0.1 and np.isnan(restored.meta["sums"]["train_loss"][1])
    assert restored.meta["history"] == [{"lr": 0.025}]
    # JSON metadata, never a pickle
    record = json.loads((tmp_path / "ck" / "1" / "meta" / "metadata").read_text())
    assert record["config"] == CONFIG and record["kind"] == "search"


def optax_counts(opt_state):
    return [int(x) for x in jax.tree.leaves(opt_state) if x.dtype == jnp.int32]


def test_empty_directory_restores_nothing(tmp_path, search_state):
    assert checkpoint.Checkpoints(tmp_path / "none", "search", CONFIG).restore(search_state[1]) is None


def test_keeps_the_last_k(tmp_path, search_state):
    store = checkpoint.Checkpoints(tmp_path / "ck", "search", CONFIG, keep=2)
    for step in range(1, 6):
        store.save(step, search_state[1], {"done": step})
    assert store.steps() == [4, 5]
    # saving an existing step again keeps the first one
    store.save(5, jax.tree.map(lambda x: x, search_state[1]), {"done": -1})
    store.close()
    with checkpoint.Checkpoints(tmp_path / "ck", "search", CONFIG) as store:
        assert store.restore(search_state[1]).meta == {"done": 5}


def _three(tmp_path, state):
    store = checkpoint.Checkpoints(tmp_path / "ck", "search", CONFIG, keep=3)
    for step in (2, 4, 6):
        store.save(step, state, {"done": step})
    store.close()
    return tmp_path / "ck"


def _data_files(step_dir):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, list((step_dir / "state").rglob("*"))
    return files


@pytest.mark.parametrize("damage", ["truncate-arrays", "flip-array-bytes", "delete-arrays",
                                    "truncate-metadata", "edit-metadata", "no-manifest",
                                    "edit-metadata-and-manifest"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, search_state, damage):
    directory = _three(tmp_path, search_state[1])
    newest = directory / "6"
    if damage == "truncate-arrays":
        for f in _data_files(newest):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "flip-array-bytes":
        for f in _data_files(newest):
            data = bytearray(f.read_bytes())
            data[len(data) // 2] ^= 0xFF
            f.write_bytes(bytes(data))
    elif damage == "delete-arrays":
        for f in _data_files(newest):
            f.unlink()
    elif damage == "truncate-metadata":
        meta = newest / "meta" / "metadata"
        meta.write_text(meta.read_text()[:40])
    elif damage == "edit-metadata":
        meta = newest / "meta" / "metadata"
        meta.write_text(meta.read_text().replace('"done": 6', '"done": 7'))
        assert '"done": 7' in meta.read_text()
    elif damage == "no-manifest":  # killed between orbax's rename and the manifest
        (newest / checkpoint.MANIFEST).unlink()
    elif damage == "edit-metadata-and-manifest":  # consistent files, wrong content: the digests see it
        meta = newest / "meta" / "metadata"
        meta.write_text(meta.read_text().replace('"done": 6', '"done": 7'))
        checkpoint._write_manifest(newest)
    lines, log = _log()
    store = checkpoint.Checkpoints(directory, "search", CONFIG, log=log)
    restored = store.restore(search_state[1])
    assert restored.step == 4 and restored.meta == {"done": 4}
    _assert_same(restored.arrays, search_state[1])
    assert len(lines) == 1, lines  # one line naming both
    assert f"checkpoint {newest} is damaged" in lines[0] and lines[0].endswith(f"falling back to {directory / '4'}")
    # the damaged one is set aside, so the resumed run can write step 6 again
    assert store.steps() == [2, 4] and (directory / "damaged-6").is_dir()
    store.save(6, search_state[1], {"done": 6})
    assert store.steps() == [2, 4, 6]
    store.close()


def test_all_damaged_is_an_error(tmp_path, search_state):
    directory = _three(tmp_path, search_state[1])
    for step in (2, 4, 6):
        (directory / str(step) / "meta" / "metadata").write_text("{")
    lines, log = _log()
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint") as err, \
            checkpoint.Checkpoints(directory, "search", CONFIG, log=log) as store:
        store.restore(search_state[1])
    assert not lines and "6 (meta/metadata is truncated" in str(err.value) and "2 (" in str(err.value)
    assert store.steps() == [2, 4, 6]  # nothing set aside when there is nothing to fall back to


def test_a_write_killed_midway_is_ignored_and_cleaned(tmp_path, search_state):
    directory = _three(tmp_path, search_state[1])
    partial = directory / "8.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half-written").write_bytes(b"\0" * 10)
    store = checkpoint.Checkpoints(directory, "search", CONFIG)
    assert store.restore(search_state[1]).step == 6
    store.save(8, search_state[1], {"done": 8})  # opening the manager to write removes the leftover
    assert not partial.exists() and store.steps() == [4, 6, 8]
    store.close()


def test_different_config_is_refused_naming_the_keys(tmp_path, search_state):
    directory = _three(tmp_path, search_state[1])
    other = CONFIG | {"channels": 4, "seed": 1}
    with pytest.raises(checkpoint.CheckpointError) as err, checkpoint.Checkpoints(directory, "search", other) as store:
        store.restore(search_state[1])
    message = str(err.value)
    assert "channels (checkpoint 2, now 4)" in message and "seed (checkpoint 0, now 1)" in message
    assert "method" not in message and "\n" not in message
    with pytest.raises(checkpoint.CheckpointError, match="'search' run"), \
            checkpoint.Checkpoints(directory, "evolve", CONFIG) as store:
        store.restore(search_state[1])


def test_digest_sees_every_bit():
    tree = {"a": np.arange(4, dtype=np.float32), "k": jax.random.key(0)}
    flipped = {"a": tree["a"].copy(), "k": tree["k"]}
    flipped["a"].view(np.uint32)[2] ^= 1
    assert checkpoint.array_digest(tree) != checkpoint.array_digest(flipped)
    assert checkpoint.array_digest(tree) == checkpoint.array_digest({"a": tree["a"].copy(), "k": jax.random.key(0)})
