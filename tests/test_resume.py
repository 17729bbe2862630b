"""Kill-and-resume in real processes: SIGKILL at random moments (one of them in the middle
of a checkpoint write), SIGINT, then ``--resume`` to the end gives bit-for-bit the result
of an uninterrupted run. Also: a NaN stops a search naming the step, or is skipped."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest


from test_cli import run_cli

TINY_SEARCH = ["search", "--channels", "2", "--cells", "1", "--batch-size", "8", "--limit", "96", "--epochs", "3",
               "--checkpoint-every", "1", "--keep", "3", "--no-progress"]
TIMING_KEYS = {"seconds", "hessian_seconds"}


def _env(cache_dir: Path | None) -> dict:
    env = dict(os.environ)
    env.update(XLA_FLAGS="--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    if cache_dir is not None:
        # the processes of one chain share compiled code, so a resumed process spends its
        # time running, not compiling (the uninterrupted reference compiles on its own)
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    return env


def _start(argv, env, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jnas.cli", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=log.open("w"), start_new_session=True)


def _steps(checkpoints: Path) -> list[int]:
    if not checkpoints.is_dir():
        return []
    return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())


def _writing(checkpoints: Path) -> bool:
    return checkpoints.is_dir() and any("tmp" in p.name for p in checkpoints.iterdir())


def _wait(proc: subprocess.Popen, condition, timeout: float = 240.0) -> bool:
    """Polls ``condition`` every 2 ms until true (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("the search neither checkpointed nor ended in time")


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _comparable(result: dict) -> str:
    # JSON text, so NaN compares equal to NaN and floats compare bit for bit (repr round-trips)
    return json.dumps(_without_timings(result), sort_keys=True)


def _kill_chain(argv, out: Path, env: dict, rng: random.Random, tmp: Path,
                plan=("kill-random", "kill-mid-write", "sigint")) -> list[str]:
    """Interrupts a run once per entry of ``plan`` (``kill-random``: SIGKILL at a random
    moment after a new checkpoint; ``kill-mid-write``: SIGKILL in the middle of a
    checkpoint write; ``sigint``: SIGINT after a new checkpoint; ``@N`` appended: only
    once checkpoint N or a later one exists), then resumes it to the end. Returns what
    happened at each interruption."""
    checkpoints = out / "checkpoints"
    events = []
    for n, entry in enumerate(plan):
        how, _, at = entry.partition("@")
        resume = ["--resume", str(out)] if _steps(checkpoints) else ["--out", str(out)]
        before = max(_steps(checkpoints), default=0)
        target = max(before + 1, int(at or 0))
        log = tmp / f"chain{n}.log"
        started = time.monotonic()
        proc = _start([*argv, *resume], env, log)
        if how == "kill-mid-write":
            # a new checkpoint begins after the first one this process writes
            ready = _wait(proc, lambda: max(_steps(checkpoints), default=0) >= target) and \
                _wait(proc, lambda: _writing(checkpoints))
        else:
            ready = _wait(proc, lambda: max(_steps(checkpoints), default=0) >= target)
            if ready:
                time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is not None:  # it finished before the blow landed: nothing to interrupt
            events.append(f"{entry}: finished first")
            break
        if how == "sigint":
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=120)
            message = log.read_text()
            assert code == 130, message
            assert "jnas: interrupted after" in message and "checkpoint saved in" in message, message
            assert "Traceback" not in message, message
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        events.append(f"{entry} after step {max(_steps(checkpoints), default=0)} "
                      f"({time.monotonic() - started:.1f} s)")
    log = tmp / "final.log"
    proc = _start([*argv, "--resume", str(out)], env, log)
    assert proc.wait(timeout=300) == 0, log.read_text()
    return events


def test_search_killed_and_resumed_is_bit_identical(tmp_path):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    reference = _start([*TINY_SEARCH, "--out", str(tmp_path / "ref")], _env(None), tmp_path / "ref.log")
    events = _kill_chain(TINY_SEARCH, tmp_path / "chain", _env(tmp_path / "cache"), rng, tmp_path)
    assert reference.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()

    expected = json.loads((tmp_path / "ref" / "result.json").read_text())
    got = json.loads((tmp_path / "chain" / "result.json").read_text())
    print(f"random seed {seed}: {events}")
    assert sum(e.startswith(("kill", "sigint")) for e in events) >= 2, (seed, events)
    assert got["genotype"] == expected["genotype"]
    assert np.array_equal(np.asarray(got["arch_weights"]), np.asarray(expected["arch_weights"]))
    assert _comparable(got) == _comparable(expected), (seed, events)
    assert len(got["history"]) == 3 and sum(h["steps"] for h in got["history"]) == 18


NAN_ARGS = ["search", "--channels", "2", "--cells", "1", "--batch-size", "8", "--limit", "64", "--steps", "6",
            "--checkpoint-every", "1", "--no-progress"]


def _poison(monkeypatch, poisoned_step: int):
    """Makes the digits loader return one NaN image, the one the weights see at
    ``poisoned_step`` (1-based) of epoch 0; returns the steps of the 6-step run whose
    batches hold it (one per epoch). A test-only hook: production code has none."""
    import jnas.data as jdata

    real = jdata.load_dataset

    def load(name="digits", **kwargs):
        dataset = real(name, **kwargs)
        batches = jdata.BilevelBatches(dataset, 8, 0)
        order, _ = batches.epoch_order(0)
        bad = int(order[(poisoned_step - 1) * 8])
        images = dataset.images.copy()
        images[bad, 0, 0, 0] = np.nan
        hits = []
        for epoch in range(2):
            train, _ = batches.epoch_order(epoch)
            for step in range(batches.steps_per_epoch):
                if bad in train[step * 8:(step + 1) * 8]:
                    hits.append(epoch * batches.steps_per_epoch + step + 1)
        load.hits = [h for h in hits if h <= 6]
        return dataclasses.replace(dataset, images=images)

    monkeypatch.setattr(jdata, "load_dataset", load)
    return load


def test_nan_stops_naming_the_step_then_skip_resumes(tmp_path, capsys, monkeypatch):
    load = _poison(monkeypatch, poisoned_step=3)
    out = tmp_path / "run"
    code, _, err = run_cli([*NAN_ARGS, "--out", str(out)], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 3 and len(lines) == 1 and "Traceback" not in err, err
    assert "non-finite loss or gradient at step 3 (epoch 0, batch 2)" in lines[0]
    assert not (out / "result.json").exists()
    # the last finite state is checkpointed (step 2) and is finite; nothing later is
    assert _steps(out / "checkpoints") == [1, 2] and str(out / "checkpoints" / "2") in lines[0]
    record = json.loads((out / "checkpoints" / "2" / "meta" / "metadata").read_text())
    assert record["meta"]["done"] == 2
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as reader:
        saved = reader.restore((out / "checkpoints" / "2" / "state").absolute())
    leaves = [np.asarray(x) for x in jax.tree.leaves(saved)]
    assert leaves and all(np.isfinite(x).all() for x in leaves if x.dtype.kind == "f")

    # resume the stopped run skipping such batches (the policy is not part of the config)
    code, _, err = run_cli([*NAN_ARGS, "--resume", str(out), "--on-nonfinite", "skip"], capsys)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert sum(h["nonfinite_skipped"] for h in result["history"]) == len(load.hits) >= 1
    assert sum(h["steps"] for h in result["history"]) == 6 - len(load.hits)
    assert np.isfinite(np.asarray(result["arch_weights"])).all()


def write_synthetic_table(path: Path, seed: int = 0) -> Path:
    """A complete NAS-Bench-201-shaped CSV (15,625 rows) of random figures: the protocol
    needs a whole table, the tests need no download."""
    import csv

    from jnas.spaces import nb201

    rng = np.random.default_rng(seed)
    n = nb201.NUM_ARCHS
    encodings = np.asarray(nb201.code_to_encoding(np.arange(n)))
    index = rng.permutation(n)
    figures = np.round(rng.uniform(10, 95, (n, 3)), 3)
    params = np.round(rng.uniform(0.1, 1.5, n), 4)
    times = np.round(rng.uniform(1000, 2000, n), 2)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "arch", "c10_valid_acc_200", "c10_test_acc_200", "cifar10_params_mb",
                         "cifar10_train_time_200_s", "c10_valid_acc_12"])
        for code in range(n):
            writer.writerow([int(index[code]), nb201.format_arch(encodings[code]), *figures[code][:2], params[code],
                             times[code], figures[code][2]])
    return path


@pytest.mark.parametrize("algo", ["reinforce"])
def test_evolve_killed_and_resumed_is_bit_identical(tmp_path, algo):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    table = write_synthetic_table(tmp_path / "table.csv")
    argv = ["evolve", "--table", str(table), "--algo", algo, "--runs", "200", "--chunk-runs", "10",
            "--budget-seconds", "2000", "--seed", "3", "--keep", "2"]
    reference = _start([*argv, "--out", str(tmp_path / "ref")], _env(None), tmp_path / "ref.log")
    events = _kill_chain(argv, tmp_path / "chain", _env(tmp_path / "cache"), rng, tmp_path)
    assert reference.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()

    expected = json.loads((tmp_path / "ref" / "result.json").read_text())
    got = json.loads((tmp_path / "chain" / "result.json").read_text())
    print(f"random seed {seed}: {events}")
    assert sum(e.startswith(("kill", "sigint")) for e in events) >= 2, (seed, events)
    assert len(got["per_run"]) == 200
    assert _comparable(got) == _comparable(expected), (seed, events)


SUPERNET_STEPS = 40  # logs every 2 steps, so checkpoints every 3 catch half-filled windows


def test_evolve_supernet_killed_and_resumed_is_bit_identical(tmp_path):
    """All three phases interrupted: SPOS training (at random, mid-write, SIGINT at any
    step), right after Kendall (checkpoint 41), and between chunks of runs."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    table = write_synthetic_table(tmp_path / "table.csv")
    argv = ["evolve", "--supernet", "--table", str(table), "--algo", "rea", "--channels", "2", "--cells", "1",
            "--batch-size", "8", "--limit", "64", "--train-steps", str(SUPERNET_STEPS), "--checkpoint-every", "3",
            "--queries", "5", "--runs", "4", "--chunk-runs", "1", "--kendall-cells", "8", "--eval-images", "16",
            "--keep", "2", "--seed", "1", "--no-progress"]
    kendall_step = SUPERNET_STEPS + 1
    plan = ["kill-random", "kill-mid-write", "sigint", f"kill-random@{kendall_step}", f"sigint@{kendall_step + 1}"]
    reference = _start([*argv, "--out", str(tmp_path / "ref")], _env(None), tmp_path / "ref.log")
    events = _kill_chain(argv, tmp_path / "chain", _env(tmp_path / "cache"), rng, tmp_path, plan=plan)
    assert reference.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()

    expected = json.loads((tmp_path / "ref" / "result.json").read_text())
    got = json.loads((tmp_path / "chain" / "result.json").read_text())
    print(f"random seed {seed}: {events}")
    assert sum(e.startswith(("kill", "sigint")) for e in events) >= 3, (seed, events)
    assert [row["step"] for row in got["history"]] == list(range(2, SUPERNET_STEPS + 1, 2))
    assert len(got["per_run"]) == 4
    assert _comparable(got) == _comparable(expected), (seed, events)
    # the last checkpoints are those of the searches: all runs searched, keep=2
    assert _steps(tmp_path / "chain" / "checkpoints") == [kendall_step + 3, kendall_step + 4]
