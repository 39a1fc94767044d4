"""benchmarks/airbench_torch.py (the PyTorch airbench94 reference) runs end to end.

A subprocess on the first 512 real CIFAR-10 training images and 256 test
images, width 0.125, batch 64, 1 epoch (8 steps, so one lookahead update):
it must exit 0 and write its JSON report. About 5 s on 2 CPU cores. Skipped when the shared CIFAR-10
builder is unavailable (see tests/cifar_cache.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cifar_cache import cifar10_root

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "airbench_torch.py"


def test_airbench_torch_reference_smoke(tmp_path):
    root = cifar10_root()
    out = tmp_path / "airbench.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(SCRIPT), "--data-dir", root, "--width", "0.125",
           "--epochs", "1", "--limit", "512", "--test-limit", "256", "--batch-size", "64",
           "--seed", "0", "--threads", "1", "--device", "cpu", "--json", str(out)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, f"failed:\n{proc.stdout}\n{proc.stderr}"
    assert all(len(line) < 80 for line in proc.stdout.splitlines()), proc.stdout
    assert "tta" in proc.stdout

    report = json.loads(out.read_text())
    for key in ("accuracy", "accuracy_tta", "train_seconds", "total_seconds", "epochs",
                "history", "torch", "threads", "cpu", "date", "command"):
        assert key in report, key
    assert 0.0 <= report["accuracy"] <= 1.0 and 0.0 <= report["accuracy_tta"] <= 1.0
    assert report["n_train"] == 512 and report["n_test"] == 256
    assert report["widths"] == [8, 32, 32] and report["steps"] == 8
    assert report["threads"] == 1 and report["epochs"] == 1.0
    assert 0 < report["train_seconds"] <= report["total_seconds"]
    (epoch,) = report["history"]
    assert epoch["steps"] == 8 and epoch["seconds"] > 0
    assert 0.0 < epoch["train_loss"] < 10.0 and 0.0 <= epoch["train_acc"] <= 1.0
