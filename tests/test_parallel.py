"""Data-parallel search and sharded scoring give the single-device results.

The pytest process has already started JAX with one CPU device, so the multi-device
checks run in subprocesses with ``--xla_force_host_platform_device_count`` (8
simulated CPU devices; 2 per process in the two-process test). All subprocesses are
started together by one module fixture, so on 2 cores their compiles overlap.

Tolerances (float32): N devices compute the same function of the same global batch
as one device -- the loss and every BatchNorm statistic are means over the global
batch, which XLA's SPMD partitioner computes as per-device partial sums plus an
all-reduce -- so only the order of the additions differs. Over 5 steps we measured
|Δα| <= 5e-9 (α itself ~1e-3, moving ~1e-3 in those steps) and |Δw| <= 1.2e-7 (weights
O(0.1..1)); the tests allow ``atol`` 1e-7 on α (20x margin, 1e-4 of α's movement)
and 1e-6 on the weights, 1e-5 relative on the losses, and require the same genotype.
Sharded scoring has no reduction across the sharded axis; it is compared at 1e-6. So do
``jnas score``'s driver and the searches of supernet-mode ``jnas evolve``, which run the
unchanged per-device function on each device's rows (``jax.shard_map``): nwot scores, the
searches' cells and fitness and the Kendall scores are compared exactly, synflow at 1e-5
relative (float32 rounding: a device evaluates another batch of cells than one device does,
which XLA may fuse differently; we measured equality here and <= 7e-8 on other cell sets).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jnas import parallel
from test_cli import assert_usage_error, run_cli

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
STEPS = 5
BATCH = 16
TIMEOUT_S = 600
ALPHA_ATOL = 1e-7
PARAMS_ATOL = 1e-6
LOSS_RTOL = 1e-5
SCORE_TOL = 1e-6
SCORE_PROXIES = ("nwot", "synflow")
PROXY_RTOL = 1e-5  # synflow; nwot exactly
HOST_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# `jnas score` in the two-process test and its one-process reference
SCORE_ARGV = ["score", "--proxy", "nwot", "--archs", "8", "--chunk", "2", "--channels", "2", "--cells", "1",
              "--image-size", "8", "--batch-size", "4", "--no-progress", "--json"]


# --------------------------------------------------------------------------- workers
# Run as ``python tests/test_parallel.py MODE OUT [PORT PROCESS_ID]`` in a subprocess.


def _search(variant: str):
    from jnas.search import darts
    from jnas.supernet import nb201

    if variant == "darts":
        net = nb201.search_network(nb201.SupernetConfig(channels=2, cells=1, num_classes=3, in_channels=1, image_size=8))
        config = darts.DartsConfig()
    else:  # PC-DARTS, with its α warm-up so the lax.cond runs under sharding too
        net = nb201.search_network(
            nb201.SupernetConfig(channels=2, cells=1, num_classes=3, in_channels=1, image_size=8, partial_channels=2),
            edge_normalization=True,
        )
        config = darts.DartsConfig(arch_lr=6e-4, arch_warmup_steps=2)
    return net, darts.make_darts(net, config, total_steps=STEPS)


def _batches(seed: int = 0):
    from jnas.search.darts import Batch

    rng = np.random.default_rng(seed)

    def one():
        return Batch(rng.normal(size=(BATCH, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, BATCH).astype(np.int32))

    return [(one(), one()) for _ in range(STEPS)]


_STEPS_BY_DEVICES: dict = {}  # jitted steps per (variant, device count), reused across runs


def _run_search(variant: str, devices, resume_on=None, resume_at: int = 3, process_local: bool = False):
    """α after every step, final weights, losses and genotype; ``devices=None``: plain jit.

    ``resume_on=M``: after ``resume_at`` steps the state goes to the host (what a
    checkpoint holds) and the search continues on M devices. ``process_local``: each
    process passes only its own slice of every global batch.
    """
    import jax

    net, search = _search(variant)

    def setup(n):
        if n is None:
            return None, jax.jit(search.step)
        mesh = parallel.make_mesh(n)
        if (variant, n) not in _STEPS_BY_DEVICES:
            _STEPS_BY_DEVICES[variant, n] = parallel.data_parallel_step(search.step, mesh)
        return mesh, _STEPS_BY_DEVICES[variant, n]

    mesh, step = setup(devices)
    state = search.init(jax.random.key(0))
    if mesh is not None:
        state = parallel.replicate(state, mesh)
    alphas, losses = [], []
    for i, (train, val) in enumerate(_batches()):
        if resume_on is not None and i == resume_at:
            mesh, step = setup(resume_on)
            state = parallel.replicate(jax.device_get(state), mesh)
        if process_local:
            rows = slice(jax.process_index() * BATCH // jax.process_count(),
                         (jax.process_index() + 1) * BATCH // jax.process_count())
            train, val = (jax.tree.map(lambda x: x[rows], b) for b in (train, val))
        if mesh is not None:
            train = parallel.shard_batch(train, mesh, process_local=process_local)
            val = parallel.shard_batch(val, mesh, process_local=process_local)
        state, metrics = step(state, train, val)
        alphas.append(jax.tree.map(np.asarray, state.arch_params))
        losses.append([float(metrics["train_loss"]), float(metrics["val_loss"])])
    arch = jax.tree.map(np.asarray, state.arch_params)
    out = {
        "alpha": np.stack([a["alpha"] for a in alphas]).tolist(),
        "beta": np.stack([a["beta"] for a in alphas]).tolist() if "beta" in arch else None,
        "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.params)],
        "losses": losses,
        "genotype": net.derive(arch),
    }
    if mesh is not None:
        out["state_replicated"] = all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state))
        out["batch_shard_rows"] = sorted({s.data.shape[0] for s in train.images.addressable_shards})
        hlo = step.lower(state, train, val).compile().as_text()
        out["all_reduces"] = hlo.count(" all-reduce(") + hlo.count(" all-reduce-start(")
    return out


def _score(devices):
    """Cross-entropy of many one-hot cells x inits at initialisation, vmapped (``jnas score``'s shape)."""
    import jax
    import jax.numpy as jnp
    from jnas.spaces import nb201 as space
    from jnas.supernet import nb201

    config = nb201.SupernetConfig(channels=2, cells=1, num_classes=3, in_channels=1, image_size=8)
    rng = np.random.default_rng(1)
    encodings = rng.integers(0, space.NUM_OPS, (16, space.NUM_EDGES))
    arch_weights = np.eye(space.NUM_OPS, dtype=np.float32)[encodings]  # (A, 6, 5) one-hot
    keys = jax.random.split(jax.random.key(3), 2)  # 2 initialisations
    images = rng.normal(size=(8, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 3, 8)

    def scores(keys, arch_weights):
        def per_init(key):
            params = nb201.init(key, config)

            def per_arch(w):
                logits = nb201.apply(params, images, w, config)
                return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(labels.size), labels])

            return jax.vmap(per_arch)(arch_weights)

        return jax.vmap(per_init, out_axes=1)(keys)  # (A, I)

    if devices is None:
        return np.asarray(jax.jit(scores)(keys, arch_weights))
    mesh = parallel.make_mesh(devices)
    sharded = parallel.shard_leading_axis(arch_weights, mesh)
    fn = jax.jit(scores, out_shardings=parallel.data_sharding(mesh))
    out = fn(parallel.replicate(keys, mesh), sharded)
    assert len(out.sharding.device_set) == devices
    return np.asarray(out)


def _score_archs(devices):
    """``jnas score``'s driver: 10 cells x 3 inits (init chunks of 2), 3 cells per device and call."""
    from jnas.proxies import batched
    from jnas.spaces import nb201 as space
    from jnas.supernet import nb201

    rng = np.random.default_rng(2)
    codes = rng.choice(space.NUM_ARCHS, 10, replace=False)
    images = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 4)
    result = batched.score_archs(codes, SCORE_PROXIES, nb201.SupernetConfig(channels=2, cells=1, image_size=8),
                                 images=images, labels=labels, inits=3, chunk=3, init_chunk=2, devices=devices)
    return {"scores": {name: s.tolist() for name, s in result.scores.items()}, "chunk": result.chunk,
            "devices": result.devices}


def _searches(devices):
    """Supernet-mode searches: 8 REA runs x 5 queries, fitness under random supernet weights."""
    import jax
    from jnas.search import discrete, oneshot, spos
    from jnas.supernet import nb201

    config = nb201.SupernetConfig(channels=2, cells=1, num_classes=3, in_channels=1, image_size=8)
    rng = np.random.default_rng(4)
    image_batches, label_batches = spos.batch_eval_data(rng.normal(size=(16, 8, 8, 1)), rng.integers(0, 3, 16), 8)
    data = oneshot.SupernetFitnessData(nb201.init(jax.random.key(0), config), image_batches, label_batches)
    mesh = None if devices is None else parallel.make_mesh(devices)
    runs = oneshot.run_searchers(discrete.make("rea", population_size=3, sample_size=2),
                                 oneshot.supernet_fitness(config), data, num_runs=8, num_queries=5, seed=3, mesh=mesh)
    return {"encodings": runs.encodings.tolist(), "fitness": runs.fitness.tolist(),
            "state": [np.asarray(leaf).tolist() for leaf in jax.tree.leaves(runs.state)]}


def _main(argv) -> tuple[int, str, str]:
    """``jnas ARGV`` in this process: exit code, stdout, stderr."""
    from jnas.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    return code, stdout.getvalue(), stderr.getvalue()


def _evolve_cli(tmp: Path):
    """``jnas evolve --supernet`` on 1 and on 4 devices, and with runs that 4 cannot split."""
    from jnas.benchmarks import nb201 as bench

    table = bench.default_path()
    if table is None:
        return None
    argv = ["evolve", "--supernet", "--table", str(table), "--algo", "rea", "--dataset", "digits", "--limit", "64",
            "--channels", "2", "--cells", "1", "--batch-size", "8", "--train-steps", "2", "--queries", "4",
            "--kendall-cells", "6", "--no-progress", "--json"]
    out = {}
    for name, extra in (("one", []), ("four", ["--devices", "4"])):
        code, _, err = _main([*argv, "--runs", "4", "--out", str(tmp / name), *extra])
        out[name] = json.loads((tmp / name / "result.json").read_text()) if code == 0 else err
    code, _, err = _main([*argv, "--runs", "6", "--devices", "4", "--out", str(tmp / "six")])
    out["indivisible"] = {"code": code, "stderr": err, "created": (tmp / "six").exists()}
    return out


def _checkpoints(directory: Path) -> dict:
    """Every process saves 3 checkpoints (keep 2) of one replicated state in one directory, then restores."""
    import jax
    from jnas import checkpoint

    state = parallel.replicate({"weights": np.arange(6, dtype=np.float32), "key": jax.random.key(7)},
                               parallel.make_mesh("all"))
    with checkpoint.Checkpoints(directory, "test", {"run": 1}, keep=2) as store:
        for step in (1, 2, 3):
            store.save(step, state, {"step": step})
        restored = store.restore(state)
    return {
        "steps": store.steps(),
        "restored_step": restored.step,
        "weights": np.asarray(restored.arrays["weights"]).tolist(),
        "key_data": np.asarray(jax.random.key_data(restored.arrays["key"])).tolist(),
        "array_writers": sorted({p.name for p in directory.glob("*/state/ocdbt.process_*")}),
    }


def _worker(mode: str, out_path: str, *rest: str) -> None:
    result: dict = {}
    if mode == "multiprocess":
        port, process_id = rest
        # the host flags start multi-process JAX: one 4-device mesh over both processes
        host_flags = ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", process_id]
        scores = Path(f"{out_path}.scores.{process_id}.csv")
        code, stdout, _ = _main([*SCORE_ARGV, *host_flags, "--out", str(scores)])
        result["score"] = {"code": code, "stdout": stdout, "csv": scores.read_text() if scores.exists() else None}
        import jax

        result.update(initialized=jax.distributed.is_initialized(), process_count=jax.process_count(),
                      device_count=jax.device_count(), local_device_count=jax.local_device_count(),
                      primary=parallel.is_primary())
        result["search"] = _run_search("darts", "all")
        result["search_process_local"] = _run_search("darts", "all", process_local=True)
        result["checkpoints"] = _checkpoints(Path(f"{out_path}.checkpoints"))
        out_path = f"{out_path}.{process_id}"
    elif mode == "rows":
        import jax

        result["device_count"] = jax.device_count()
        result["score"] = {"reference": _score_archs(None), "sharded": _score_archs(4)}
        result["searches"] = {"reference": _searches(None), "sharded": _searches(4)}
        result["evolve"] = _evolve_cli(Path(out_path).parent / "evolve")
        scores = Path(f"{out_path}.scores.csv")
        code, _, err = _main([*SCORE_ARGV, "--out", str(scores)])
        result["score_cli"] = {"code": code, "stderr": err, "csv": scores.read_text() if code == 0 else None}
    else:
        import jax

        variant = mode
        result["device_count"] = jax.device_count()
        result["reference"] = _run_search(variant, None)
        counts = (2, 4, 8) if variant == "darts" else (8,)
        result["sharded"] = {str(n): _run_search(variant, n) for n in counts}
        if variant == "darts":
            # a host copy of the state after 3 steps on 8 devices resumes on 2
            result["resumed_8_to_2"] = _run_search(variant, 8, resume_on=2)
            try:
                parallel.shard_batch(np.zeros((12, 2), np.float32), parallel.make_mesh(8))
                result["indivisible_error"] = None
            except ValueError as e:
                result["indivisible_error"] = str(e)
        else:
            result["scores_reference"] = _score(None).tolist()
            result["scores_sharded"] = _score(8).tolist()
    Path(out_path).write_text(json.dumps(result))


# --------------------------------------------------------------------------- fixtures


def _env(devices_per_process: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={devices_per_process} --xla_backend_optimization_level=0"
    )
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{name: [returncode, stderr, result]}`` of every subprocess, started together once per session.

    Under pytest-xdist each worker that runs a test of this module sets the module
    fixture up; the first one runs the subprocesses (3-4 min on 2 cores) and writes their
    results beside the workers' temporary directories, the others wait on a lock and read
    them. (xdist's ``--dist loadgroup`` would do it, but with pytest 9.2 and xdist 3.8 it
    groups nothing: xdist renames ``item._nodeid``, which pytest 9 no longer reads.)
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _start_all(tmp_path_factory.mktemp("parallel"))
    shared = tmp_path_factory.getbasetemp().parent / "parallel-runs"  # this session's, every worker's
    shared.mkdir(exist_ok=True)
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        done = shared / "results.json"
        if not done.exists():
            done.write_text(json.dumps(_start_all(shared)))
        return json.loads(done.read_text())


def _start_all(tmp) -> dict:
    """Starts every subprocess at once; returns ``{name: [returncode, stderr, result]}``."""
    port = str(_free_port())
    cmds = {
        "darts": ([sys.executable, str(HERE), "darts", str(tmp / "darts.json")], _env(8)),
        "pcdarts": ([sys.executable, str(HERE), "pcdarts", str(tmp / "pcdarts.json")], _env(8)),
        "rows": ([sys.executable, str(HERE), "rows", str(tmp / "rows.json")], _env(4)),
        "mp0": ([sys.executable, str(HERE), "multiprocess", str(tmp / "mp.json"), port, "0"], _env(2)),
        "mp1": ([sys.executable, str(HERE), "multiprocess", str(tmp / "mp.json"), port, "1"], _env(2)),
    }
    procs = {
        name: subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (cmd, env) in cmds.items()
    }
    results = {}
    for name, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            err = f"timed out after {TIMEOUT_S} s\n{err}"
        path = {"mp0": tmp / "mp.json.0", "mp1": tmp / "mp.json.1"}.get(name, tmp / f"{name}.json")
        data = json.loads(path.read_text()) if proc.returncode == 0 and path.exists() else None
        results[name] = [proc.returncode, err, data]
    return results


def _get(runs, name):
    code, err, data = runs[name]
    assert code == 0 and data is not None, f"{name} worker failed (exit {code}):\n{err[-4000:]}"
    return data


def _assert_same_search(got: dict, ref: dict, label: str) -> None:
    np.testing.assert_allclose(got["alpha"], ref["alpha"], rtol=0, atol=ALPHA_ATOL, err_msg=f"{label}: α trajectory")
    if ref["beta"] is not None:
        np.testing.assert_allclose(got["beta"], ref["beta"], rtol=0, atol=ALPHA_ATOL, err_msg=f"{label}: β trajectory")
    for i, (a, b) in enumerate(zip(got["params"], ref["params"], strict=True)):
        np.testing.assert_allclose(a, b, rtol=0, atol=PARAMS_ATOL, err_msg=f"{label}: weight leaf {i}")
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=LOSS_RTOL, err_msg=f"{label}: losses")
    assert got["genotype"] == ref["genotype"], label


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("variant", ["darts", "pcdarts"])
def test_data_parallel_search_matches_one_device(runs, variant):
    data = _get(runs, variant)
    assert data["device_count"] == 8
    ref = data["reference"]
    alpha = np.asarray(ref["alpha"])
    # α must actually move, or matching trajectories would prove nothing
    assert np.abs(alpha[-1] - alpha[0]).max() > 100 * ALPHA_ATOL
    for n, got in data["sharded"].items():
        _assert_same_search(got, ref, f"{variant} on {n} devices")
        assert got["state_replicated"], n
        assert got["batch_shard_rows"] == [BATCH // int(n)], n
        assert got["all_reduces"] > 0, f"no all-reduce in the {n}-device step"


def test_state_moves_between_device_counts(runs):
    """The replicated state is whole on every device: a host copy (what a checkpoint
    stores) taken on 8 devices continues on 2 as if nothing had changed."""
    data = _get(runs, "darts")
    _assert_same_search(data["resumed_8_to_2"], data["reference"], "8 then 2 devices")
    assert data["resumed_8_to_2"]["batch_shard_rows"] == [BATCH // 2]


def test_indivisible_global_batch_is_a_clear_error(runs):
    message = _get(runs, "darts")["indivisible_error"]
    assert message is not None and "12" in message and "8 devices" in message


def test_sharded_scoring_matches_one_device(runs):
    data = _get(runs, "pcdarts")
    ref, got = np.asarray(data["scores_reference"]), np.asarray(data["scores_sharded"])
    assert ref.shape == (16, 2) and np.isfinite(ref).all()
    assert np.ptp(ref) > 1e-3  # the archs do score differently
    np.testing.assert_allclose(got, ref, rtol=SCORE_TOL, atol=SCORE_TOL)


def test_two_processes_agree_with_one(runs):
    """2 processes x 2 CPU devices, one global mesh, gloo collectives; vs the 1-device run."""
    ref = _get(runs, "darts")["reference"]
    results = [_get(runs, f"mp{i}") for i in (0, 1)]
    for i, data in enumerate(results):
        assert data["initialized"] and data["process_count"] == 2, data
        assert data["device_count"] == 4 and data["local_device_count"] == 2
        assert data["primary"] == (i == 0)
        _assert_same_search(data["search"], ref, f"process {i}")
        assert data["search"]["batch_shard_rows"] == [BATCH // 4]
        # each process feeding only its half of every batch gives the same search
        _assert_same_search(data["search_process_local"], ref, f"process {i}, process-local batches")
    assert results[0]["search"]["alpha"] == results[1]["search"]["alpha"]


def test_two_processes_only_process_0_writes(runs):
    """`jnas score --coordinator ... --num-processes 2 --process-id I` in both processes: the
    architectures split over the 4 devices of both, process 0 alone writes the CSV and prints
    the JSON, and the scores equal one process on one device."""
    first, second = (_get(runs, f"mp{i}")["score"] for i in (0, 1))
    assert first["code"] == second["code"] == 0
    assert json.loads(first["stdout"])["devices"] == 4
    assert second["stdout"] == "" and second["csv"] is None
    reference = _get(runs, "rows")["score_cli"]
    assert reference["code"] == 0, reference["stderr"]
    rows = list(csv.DictReader(io.StringIO(first["csv"])))
    assert len(rows) == 8 and rows == list(csv.DictReader(io.StringIO(reference["csv"])))  # nwot: exactly
    # checkpoints: every process saves and restores alike; orbax writes the arrays from process 0
    saved = [_get(runs, f"mp{i}")["checkpoints"] for i in (0, 1)]
    assert saved[0] == saved[1]
    assert saved[0]["steps"] == [2, 3] and saved[0]["restored_step"] == 3
    assert saved[0]["weights"] == list(range(6)) and saved[0]["array_writers"] == ["ocdbt.process_0"]


def test_sharded_score_archs_matches_one_device(runs):
    """`score_archs(..., devices=4)`: shard_map of the unchanged scorer, composed with init chunks."""
    data = _get(runs, "rows")
    ref, got = data["score"]["reference"], data["score"]["sharded"]
    assert (ref["devices"], got["devices"]) == (1, 4) and ref["chunk"] == got["chunk"] == 3
    for name in SCORE_PROXIES:
        expected, actual = np.asarray(ref["scores"][name]), np.asarray(got["scores"][name])
        assert expected.shape == (10, 3), name
        finite = np.isfinite(expected)
        np.testing.assert_array_equal(np.isfinite(actual), finite, err_msg=name)
        assert finite.sum() >= 15 and np.ptp(expected[finite]) > 0, name  # the cells do score differently
        if name == "nwot":
            np.testing.assert_array_equal(actual, expected)
        else:
            np.testing.assert_allclose(actual[finite], expected[finite], rtol=PROXY_RTOL, atol=0, err_msg=name)


def test_sharded_evolve_population_matches_one_device(runs):
    """Supernet-mode searches with the runs split over 4 devices: the same cells, fitness and states."""
    data = _get(runs, "rows")
    ref, got = data["searches"]["reference"], data["searches"]["sharded"]
    assert got == ref
    encodings = np.asarray(ref["encodings"])
    assert encodings.shape == (8, 5, 6) and len({e.tobytes() for e in encodings}) == 8  # the runs differ
    evolve = data["evolve"]
    if evolve is None:
        pytest.skip("no NAS-Bench-201 table: `jnas evolve --supernet --devices 4` not run")
    one, four = evolve["one"], evolve["four"]
    assert isinstance(one, dict) and isinstance(four, dict), (one, four)
    assert (one["devices"], four["devices"]) == (1, 4)
    assert four["per_run"] == one["per_run"]
    assert four["kendall"]["supernet_acc"] == one["kendall"]["supernet_acc"]
    bad = evolve["indivisible"]
    lines = bad["stderr"].strip().splitlines()
    assert bad["code"] == 2 and len(lines) == 1 and "runs (6)" in lines[0] and "4 devices" in lines[0], bad
    assert not bad["created"]


if __name__ == "__main__":
    _worker(*sys.argv[1:])


# --------------------------------------------------------------------------- in-process


def test_device_count_parsing():
    assert parallel.device_count("all") == parallel.device_count(None) >= 1
    assert parallel.device_count("1") == 1
    for bad in ("0", "two", -1, 0, True):
        with pytest.raises(ValueError, match="devices"):
            parallel.device_count(bad)
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        parallel.device_count(10_000)


def test_initialize_distributed_is_a_no_op_without_a_cluster(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert parallel.initialize_distributed() is False
    assert parallel.initialize_distributed(num_processes=1) is False
    with pytest.raises(ValueError, match="coordinator"):
        parallel.initialize_distributed(num_processes=2, process_id=0)
    assert parallel.is_primary()


def test_one_device_mesh_round_trip():
    import jax

    mesh = parallel.make_mesh(1)
    assert mesh.axis_names == (parallel.DATA_AXIS,) and mesh.devices.size == 1
    tree = {"x": np.arange(6.0).reshape(3, 2), "key": jax.random.key(0)}
    rep = parallel.replicate(tree, mesh)
    assert rep["x"].sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(rep["x"]), tree["x"])
    with pytest.raises(ValueError, match="scalar"):
        parallel.shard_batch(np.float32(1.0), mesh)


def test_jnas_search_devices_flag_matches_one_device(tmp_path):
    """`jnas search --devices 2` end to end (runner + CLI) against the same search on one device."""
    argv = [sys.executable, "-m", "jnas.cli", "search", "--steps", "3", "--limit", "64", "--channels", "2",
            "--cells", "1", "--batch-size", "8", "--no-progress"]
    procs = [
        subprocess.Popen([*argv, "--out", str(tmp_path / name), *extra], env=_env(2), cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, extra in (("one", []), ("two", ["--devices", "2"]))
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=TIMEOUT_S)
        assert proc.returncode == 0, err[-3000:]
    one = json.loads((tmp_path / "one" / "result.json").read_text())
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert (one["devices"], two["devices"]) == (1, 2)
    assert one["genotype"] == two["genotype"]
    np.testing.assert_allclose(two["arch_weights"], one["arch_weights"], rtol=0, atol=1e-7)
    for a, b in zip(one["history"], two["history"]):
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-5 * abs(a["train_loss"])


@pytest.mark.parametrize("value", ["3", "0", "many"])
def test_jnas_search_bad_devices(value, tmp_path, capsys):
    from jnas.cli import main

    # the test process sees 1 CPU device: 3 is too many, 0 and 'many' are not counts
    assert main(["search", "--devices", value, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--devices" in err[0], err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- host flags

TINY_COMMANDS = {
    "search": ["search", "--steps", "1", "--limit", "64", "--channels", "2", "--cells", "1", "--batch-size", "8"],
    "score": ["score", "--proxy", "params", "--archs", "5", "--channels", "2", "--cells", "1", "--image-size", "8"],
    "evolve": ["evolve", "--supernet", "--runs", "2", "--queries", "1", "--train-steps", "1"],
}


@pytest.mark.parametrize("command", sorted(TINY_COMMANDS))
@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--num-processes", "2"], "--num-processes given without --coordinator"),
        (["--process-id", "0"], "--process-id given without --coordinator"),
        (["--coordinator", "localhost:12345"], "needs --num-processes P and --process-id I"),
        (["--coordinator", "localhost:12345", "--num-processes", "2"], "needs --process-id I"),
        (["--coordinator", "localhost:12345", "--num-processes", "2", "--process-id", "2"], "must lie in 0..1"),
        (["--coordinator", "localhost"], "expected HOST:PORT"),
        (["--coordinator", "host:99999"], "expected HOST:PORT"),
        (["--num-processes", "0"], "positive integer"),
        (["--process-id", "-1"], "non-negative integer"),
    ],
)
def test_host_flags_bad_combinations_are_usage_errors(command, flags, fragment, tmp_path, capsys, monkeypatch):
    for name in HOST_ENV:
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / ("o.csv" if command == "score" else "o")
    code, _, err = run_cli([*TINY_COMMANDS[command], *flags, "--no-progress", "--out", str(out)], capsys)
    assert_usage_error(code, err, fragment)
    assert not out.exists()


def test_evolve_device_flags_need_supernet(tmp_path, capsys):
    code, _, err = run_cli(["evolve", "--devices", "2", "--coordinator", "auto", "--out", str(tmp_path / "o")], capsys)
    assert_usage_error(code, err, "--devices, --coordinator only apply with --supernet")
