"""`jnas train`: the DARTS evaluation protocol end to end on a reduced schedule."""

import json
import math
import shutil

import numpy as np

from jnas.cli import main
from jnas.evaluation import train as etrain


def test_cutout_zeroes_a_clipped_square():
    images = np.ones((3, 8, 8, 1), np.float32)
    out = etrain.cutout(images, 4, np.random.default_rng(0))
    zeros = (out == 0).sum(axis=(1, 2, 3))
    assert ((zeros > 0) & (zeros <= 16)).all()
    assert (out[out != 0] == 1).all()


def test_lr_is_a_per_epoch_cosine_to_zero():
    config = etrain.TrainConfig(epochs=10)
    assert etrain.lr_at_epoch(config, 0) == 0.025
    assert math.isclose(etrain.lr_at_epoch(config, 5), 0.0125)
    assert math.isclose(etrain.lr_at_epoch(config, 10), 0.0, abs_tol=1e-12)


def test_train_cli_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--genotype", "DARTS_V2", "--dataset", "digits", "--layers", "3", "--channels", "4",
            "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "16", "--limit", "48", "--auxiliary",
            "--cutout", "--cutout-length", "4", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert len(result["history"]) == 2 and result["resumed_from_epoch"] == 0
    assert result["steps_per_epoch"] == 2
    assert 0.0 <= result["test_acc"] <= 1.0
    assert result["genotype"].startswith("Genotype(normal=[('sep_conv_3x3', 0)")
    np.testing.assert_allclose([h["drop_prob"] for h in result["history"]], [0.0, 0.1], rtol=1e-6)
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]
    capsys.readouterr()

    # a finished run is not overwritten by accident
    assert main(argv) == 2
    assert "already holds a finished run" in capsys.readouterr().err

    # interrupted after epoch 1: resume and repeat the uninterrupted run exactly
    (out / "result.json").unlink()
    shutil.rmtree(out / "checkpoints" / "2")
    assert main(argv) == 0
    resumed = json.loads((out / "result.json").read_text())
    assert resumed["resumed_from_epoch"] == 1
    for key in ("train_loss", "test_loss", "test_acc"):
        assert np.isclose(resumed["history"][1][key], result["history"][1][key], rtol=1e-5), key

    # a different config in the same directory is refused in one line
    (out / "result.json").unlink()
    assert main(argv[:-2] + ["--seed", "1", "--out", str(out)]) == 2
    assert "different training run" in capsys.readouterr().err


def test_train_cli_bad_genotype(capsys, tmp_path):
    assert main(["train", "--genotype", "DARTS_V9", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jnas: error:") and "known names" in err and err.count("\n") == 1
