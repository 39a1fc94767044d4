"""End-to-end on the REAL CIFAR-10: `gpuconv train` on a subset must learn.

tiny-cnn, 5,000 training images, batch 64, 2 epochs (156 steps) on the CPU, then the
report on the first 1,000 test images. Measured: about 40-46 % test accuracy
(chance: 10 %), about 50 s of CPU time on 2 cores. Skipped when the shared
CIFAR-10 builder is unavailable (see tests/cifar_cache.py).
"""
from __future__ import annotations

import json

import pytest

from cifar_cache import cifar10_root
from gpuconv.cli import main

pytestmark = pytest.mark.slow


def test_train_tiny_cnn_on_real_cifar10_subset(tmp_path, capsys):
    root = cifar10_root()
    out = tmp_path / "run"
    args = ["train", "--data-dir", root, "--model", "tiny-cnn", "--limit", "5000",
            "--val-split", "500", "--test-limit", "1000", "--batch-size", "64", "--epochs", "2",
            "--augment", "none", "--device", "cpu", "--seed", "0", "--out", str(out), "--quiet"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert report["samples"] == 1000
    assert report["accuracy"] > 0.30          # chance is 0.10; measured ~0.40-0.46
    assert history[-1]["loss"] < history[0]["loss"]

    capsys.readouterr()
    assert main(["evaluate", str(out), "--limit", "1000", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(report["accuracy"])
    print("\n" + f"real CIFAR-10 subset: test accuracy {report['accuracy']:.3f}, "
          f"val accuracy {[r['val_accuracy'] for r in history]}")
