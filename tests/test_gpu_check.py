"""benchmarks/gpu_check.sh without a GPU: arguments, folder layout, data handling and
the skip messages (the GPU steps themselves run only where CUDA answers)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from gpuconv.backend import cuda_is_available
from synthetic_cifar import write_cifar

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STEPS = ["machine", "data", "gpu-tests", "bench", "train", "train-amp", "airbench"]

pytestmark = [
    pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                       reason="needs bash and coreutils timeout"),
    pytest.mark.skipif(cuda_is_available(), reason="CUDA answers here: the script would "
                       "run the real GPU steps"),
]


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", **env}
    full.pop("PYTHONPATH", None)  # the script must find the checkout by itself
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=full, timeout=120)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar"), n_train=20, n_test=10, layout="py")


def summary(out: Path) -> dict[str, dict]:
    data = json.loads((out / "summary.json").read_text())
    assert data["schema"] == "gpuconv-gpu-check/1"
    return {s["step"]: s for s in data["steps"]}


def test_bad_arguments_exit_2_and_write_nothing(tmp_path, cifar):
    assert run().returncode == 2
    assert "usage:" in run().stderr
    assert run(str(tmp_path / "a"), str(tmp_path / "b"), "c").returncode == 2
    proc = run(str(tmp_path / "out"), str(tmp_path / "missing.tar.gz"))
    assert proc.returncode == 2 and "missing.tar.gz: no such file" in proc.stderr
    assert not (tmp_path / "out").exists()
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("old results")
    proc = run(str(used), str(cifar))
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert sorted(p.name for p in used.iterdir()) == ["keep.txt"]
    proc = run(str(tmp_path / "out"), GPU_CHECK_BUDGET="soon")
    assert proc.returncode == 2 and "GPU_CHECK_BUDGET" in proc.stderr


def test_without_cuda_every_gpu_step_is_skipped_with_the_reason(tmp_path, cifar):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    out = tmp_path / "results"
    proc = run(str(out), str(archive))
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    steps = summary(out)
    assert list(steps) == STEPS
    assert steps["machine"]["status"] == "passed" and steps["data"]["status"] == "passed"
    for name in ("gpu-tests", "bench", "train", "train-amp"):
        assert steps[name]["status"] == "skipped"
        assert steps[name]["note"].startswith("no usable CUDA device: ")
    assert steps["airbench"]["status"] == "skipped" and steps["airbench"]["note"]
    machine = json.loads((out / "machine.json").read_text())
    assert machine["cuda_usable"] is False and machine["cuda_unusable_reason"]
    for key in ("date", "python", "numpy", "gpuconv", "commit", "nvidia_smi"):
        assert key in machine
    for name in ("summary.txt", "nvidia-smi.txt", "logs/machine.log", "logs/data.log"):
        assert (out / name).is_file(), name
    assert "gpu-tests  skipped" in (out / "summary.txt").read_text()
    assert not (out / "data").exists()  # the unpacked copy is removed at the end
    assert not (out / ".steps.tsv").exists()


@pytest.mark.parametrize("where", ["root", "batches"])
def test_a_folder_in_the_official_layout_is_used_in_place(tmp_path, cifar, where):
    out = tmp_path / "results"
    given = cifar if where == "root" else cifar / "cifar-10-batches-py"
    proc = run(str(out), str(given))
    assert proc.returncode == 3, proc.stderr
    step = summary(out)["data"]
    assert step["status"] == "passed" and str(cifar) in step["note"]
    assert not (out / "data").exists()


def test_a_folder_without_cifar_and_no_data_at_all(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run(str(tmp_path / "r1"), str(empty))
    assert proc.returncode == 3
    assert summary(tmp_path / "r1")["data"]["status"] == "failed"
    proc = run(str(tmp_path / "r2"))
    assert summary(tmp_path / "r2")["data"]["note"].startswith("no CIFAR-10 given")


def test_an_exhausted_budget_skips_steps_as_out_of_time(tmp_path):
    proc = run(str(tmp_path / "r"), GPU_CHECK_BUDGET="0")
    assert proc.returncode == 3
    machine = summary(tmp_path / "r")["machine"]
    assert machine["status"] == "skipped" and machine["note"].startswith("out of time")
