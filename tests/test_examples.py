"""The scripts in examples/ run (tiny settings through environment variables)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from synthetic_cifar import write_cifar

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _run(script: str, tmp_path: Path, **env: str) -> str:
    full_env = dict(os.environ, GPUCONV_DEVICE="cpu", **env)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True,
                          text=True, env=full_env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_train_cifar10_example(tmp_path):
    data = write_cifar(tmp_path / "data", n_train=200, n_test=50, layout="py")
    out = _run("train_cifar10.py", tmp_path, GPUCONV_DATA=str(data),
               GPUCONV_EXAMPLE_LIMIT="200", GPUCONV_EXAMPLE_EPOCHS="1")
    assert "Epoch 1/1" in out and "test:" in out
    # the model goes to its run folder, not loose into the current one
    assert (tmp_path / "runs" / "example-cifar10" / "cifar10_cnn.npz").is_file()
    assert not (tmp_path / "cifar10_cnn.npz").exists()


def test_custom_layer_example(tmp_path):
    out = _run("custom_layer.py", tmp_path, GPUCONV_EXAMPLE_SAMPLES="256")
    assert "gradient check" in out and "trained a model with ChannelScale" in out


def test_mnist_dataset_example(tmp_path):
    out = _run("mnist_dataset.py", tmp_path, GPUCONV_EXAMPLE_EPOCHS="1")
    assert "wrote a synthetic IDX dataset" in out and "test accuracy" in out
