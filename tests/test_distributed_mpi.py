"""Data parallelism on real MPI: ``mpiexec -n 2`` against one process (seconds each).

Each test launches the worker tests/mpi_workers/train_api.py (the Python API)
or ``python -m gpuconv train`` (the CLI) under ``mpiexec -n 2`` and alone, and
compares: parameters (float64 within 1e-10, float32 within 1e-5, relative, per
array), identical replicas, equal evaluation on every rank; SyncBatchNorm
gives the one-process result, local BatchNorm documents that it does not;
resuming across world sizes, from epoch ends and from inside an epoch (a stop
asked on one rank, a periodic checkpoint before a kill); a killed or failing
rank ends the job non-zero within 30 s; mismatched settings stop with a
message naming the difference; ``--nproc 2`` stopped by SIGTERM resumes to
the one-process result; ``--recipe airbench --nproc 2`` trains.
Skipped with the reason where mpi4py or mpiexec is missing (CI installs the
``mpi`` extra, so there they run).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest

from gpuconv import distributed as dist
from gpuconv.io.checkpoint import load_checkpoint

from synthetic_cifar import write_cifar

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "mpi_workers" / "train_api.py"
MPIEXEC = dist.find_mpiexec()

pytestmark = [
    pytest.mark.skipif(not dist.mpi4py_installed(),
                       reason="mpi4py is not installed (pip install -e '.[mpi]')"),
    pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec beside python or on PATH"),
    pytest.mark.skipif(dist.launched_by_mpi(), reason="already inside an MPI job"),
]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in dist.env.SIZE_VARS and not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["OMP_NUM_THREADS"] = "1"  # the single process too: the same BLAS path
    return env


def _run(cmd, ranks=None, timeout=120, check=True):
    full = ([MPIEXEC, "-n", str(ranks)] if ranks else []) + [str(c) for c in cmd]
    start = time.monotonic()
    proc = subprocess.run(full, env=_env(), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    proc.elapsed = time.monotonic() - start
    if check and proc.returncode:
        raise AssertionError(f"{full} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _api(out: Path, *args, ranks=None, **kw):
    out.mkdir(parents=True, exist_ok=True)
    return _run([sys.executable, WORKER, out, *args], ranks=ranks, **kw)


def _rel(a, b) -> float:
    return max(float(numpy.linalg.norm(a[k] - b[k]) / max(numpy.linalg.norm(a[k]), 1e-300))
               for k in a.files)


def _rank(out: Path, r: int):
    return numpy.load(out / f"rank{r}.npz"), json.loads((out / f"rank{r}.json").read_text())


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_two_ranks_train_the_one_process_parameters(tmp_path, dtype, tol):
    # 69 samples, global batch 16: the last batch (5) splits 3 + 2; augmentation on
    common = ("plain", dtype, "--n", "69", "--epochs", "2", "--augment")
    _api(tmp_path / "one", *common)
    _api(tmp_path / "two", *common, ranks=2)
    one, one_log = _rank(tmp_path / "one", 0)
    (r0, log0), (_, log1) = _rank(tmp_path / "two", 0), _rank(tmp_path / "two", 1)
    assert log0["size"] == 2 and log0["backend"] == "mpi"
    assert _rel(one, r0) < tol
    assert log0["checksum"] == log1["checksum"]                      # identical replicas
    assert log0["evaluate"] == log1["evaluate"]                      # same numbers everywhere
    assert log0["evaluate"]["samples"] == one_log["evaluate"]["samples"] == 37
    assert log0["evaluate"]["loss"] == pytest.approx(one_log["evaluate"]["loss"], rel=tol)
    assert [h["loss"] for h in log0["history"]] == \
        pytest.approx([h["loss"] for h in one_log["history"]], rel=tol)


def test_sync_batchnorm_gives_the_one_process_result_and_local_bn_does_not(tmp_path):
    common = ("float64", "--n", "69", "--epochs", "2")
    _api(tmp_path / "one", "bn-local", *common)          # one process: plain BatchNorm
    _api(tmp_path / "sync", "bn-sync", *common, ranks=2)
    _api(tmp_path / "local", "bn-local", *common, ranks=2)
    one, _ = _rank(tmp_path / "one", 0)
    assert _rel(one, _rank(tmp_path / "sync", 0)[0]) < 1e-10
    local0, log0 = _rank(tmp_path / "local", 0)
    # local BN: each rank normalises its own half-batch, so training differs ...
    assert _rel(one, local0) > 1e-4
    # ... but the replicas stay identical (rank 0's running statistics every epoch)
    assert log0["checksum"] == _rank(tmp_path / "local", 1)[1]["checksum"]


def test_resume_a_two_rank_run_with_one_and_a_one_rank_run_with_two(tmp_path):
    common = ("plain", "float64", "--augment")
    _api(tmp_path / "ref", *common, "--epochs", "2")
    ref, _ = _rank(tmp_path / "ref", 0)
    _api(tmp_path / "a", *common, "--epochs", "1", ranks=2)
    _api(tmp_path / "a", *common, "--epochs", "2", "--resume")
    _api(tmp_path / "b", *common, "--epochs", "1")
    _api(tmp_path / "b", *common, "--epochs", "2", "--resume", ranks=2)
    assert _rel(ref, _rank(tmp_path / "a", 0)[0]) < 1e-10
    assert _rel(ref, _rank(tmp_path / "b", 0)[0]) < 1e-10


def test_a_stop_on_one_rank_stops_both_mid_epoch_and_resumes_with_any_world_size(tmp_path):
    common = ("plain", "float64", "--augment", "--epochs", "2")
    _api(tmp_path / "ref", *common)
    ref, ref_log = _rank(tmp_path / "ref", 0)
    # rank 1 alone asks for a stop at epoch 1, step 3 (of 5); rank 0 stops there too
    _api(tmp_path / "a", *common, "--stop-rank", "1", "--fail-epoch", "1", "--fail-step", "3",
         ranks=2)
    for r in (0, 1):
        assert json.loads((tmp_path / "a" / f"rank{r}.json").read_text())["interrupted"] == \
            [1, 3, "train", "callback"]
    _api(tmp_path / "a", *common, "--resume")                    # ... continued alone
    # one process stops at epoch 2, step 2; two ranks continue it
    _api(tmp_path / "b", *common, "--stop-rank", "0", "--fail-step", "2")
    _api(tmp_path / "b", *common, "--resume", ranks=2)
    for run in ("a", "b"):
        params, log = _rank(tmp_path / run, 0)
        assert _rel(ref, params) < 1e-10, run
        assert [h["loss"] for h in log["history"]] == \
            pytest.approx([h["loss"] for h in ref_log["history"]], rel=1e-10)
        assert [h["val_accuracy"] for h in log["history"]] == \
            [h["val_accuracy"] for h in ref_log["history"]]


def test_a_periodic_checkpoint_before_a_kill_resumes_mid_epoch(tmp_path):
    common = ("plain", "float64", "--augment", "--epochs", "2", "--checkpoint-every", "3steps")
    _api(tmp_path / "ref", *common)
    # rank 1 dies at epoch 2, step 4: the last checkpoint is from epoch 2, step 3
    proc = _api(tmp_path / "run", *common, "--kill-rank", "1", "--fail-step", "4", ranks=2,
                check=False, timeout=60)
    assert proc.returncode != 0
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert (ckpt.epoch, ckpt.partial["step"], ckpt.status) == (1, 3, "running")
    _api(tmp_path / "run", *common, "--resume", ranks=2)
    assert _rel(_rank(tmp_path / "ref", 0)[0], _rank(tmp_path / "run", 0)[0]) < 1e-10


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("cifar"), n_train=140, n_test=30)


def _train_args(cifar, out):
    return ["-m", "gpuconv", "train", "--data-dir", cifar, "--model", "tiny-cnn",
            "--epochs", "2", "--batch-size", "16", "--val-split", "40", "--limit", "64",
            "--dtype", "float64", "--device", "cpu", "--seed", "1", "--quiet", "--out", out]


def test_cli_nproc_2_trains_the_plain_run(cifar, tmp_path):
    _run([sys.executable, *_train_args(cifar, tmp_path / "one")])
    proc = _run([sys.executable, *_train_args(cifar, tmp_path / "two"), "--nproc", "2"])
    assert proc.stdout.count("test accuracy") == 1                 # rank 0 reports alone
    one = numpy.load(tmp_path / "one" / "checkpoint.npz")
    two = numpy.load(tmp_path / "two" / "checkpoint.npz")
    params = [k for k in one.files if k.startswith("param/")]
    assert params and max(float(numpy.linalg.norm(one[k] - two[k]) / numpy.linalg.norm(one[k]))
                          for k in params) < 1e-10
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "backend": "mpi"}
    assert json.loads((tmp_path / "one" / "config.json").read_text())["distributed"] == \
        {"world_size": 1, "backend": "single"}


def _params(path: Path) -> dict:
    ckpt = numpy.load(path)
    return {k: ckpt[k] for k in ckpt.files if k.startswith("param/")}


def test_cli_nproc_2_stopped_by_sigterm_resumes_to_the_one_process_run(tmp_path):
    data = write_cifar(tmp_path / "data", n_train=1000, n_test=20)
    args = ["-m", "gpuconv", "train", "--data-dir", data, "--model", "tiny-cnn", "--epochs", "3",
            "--batch-size", "16", "--val-split", "40", "--limit", "960", "--dtype", "float64",
            "--device", "cpu", "--seed", "1", "--checkpoint-every", "1steps", "--quiet"]
    _run([sys.executable, *args, "--out", tmp_path / "one"], timeout=300)
    run = tmp_path / "two"
    proc = subprocess.Popen([sys.executable, *map(str, args), "--out", str(run), "--nproc", "2"],
                            env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.npz").exists() and proc.poll() is None and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)   # to gpuconv: passed to mpiexec, which tells each rank
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.count("Interrupted (SIGTERM)") == 1 and "MPI_Abort" not in err, err
    ckpt = load_checkpoint(run / "checkpoint.npz")
    assert ckpt.status == "interrupted" and ckpt.epoch < 3
    resumed = _run([sys.executable, *args, "--resume", run, "--nproc", "2"], timeout=300)
    assert resumed.stdout.count("test accuracy") == 1
    one, two = _params(tmp_path / "one" / "checkpoint.npz"), _params(run / "checkpoint.npz")
    assert max(float(numpy.linalg.norm(one[k] - two[k]) / numpy.linalg.norm(one[k]))
               for k in one) < 1e-10
    config = json.loads((run / "config.json").read_text())
    assert config["resumed"][-1]["distributed"] == {"world_size": 2, "backend": "mpi"}


def test_cli_recipe_airbench_trains_on_2_ranks(cifar, tmp_path):
    proc = _run([sys.executable, "-m", "gpuconv", "train", "--recipe", "airbench", "--width",
                 "0.125", "--data-dir", cifar, "--limit", "128", "--batch-size", "32",
                 "--epochs", "1.5", "--test-limit", "30", "--eval-batch-size", "30",
                 "--device", "cpu", "--quiet", "--out", tmp_path / "run", "--nproc", "2"],
                timeout=300)
    assert proc.stdout.count("test accuracy") == 1 and "with TTA" in proc.stdout
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]  # 1.5 epochs: max_steps ends epoch 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["distributed"] == \
        {"world_size": 2, "backend": "mpi"}
    bad = _run([sys.executable, "-m", "gpuconv", "train", "--recipe", "airbench", "--data-dir",
                cifar, "--batch-size", "63", "--device", "cpu", "--quiet", "--out",
                tmp_path / "bad", "--nproc", "2"], check=False, timeout=120)
    assert bad.returncode == 2 and "--batch-size 63 is the global batch of the 2 ranks" in \
        bad.stderr, bad.stderr


def test_ranks_with_different_settings_stop_with_one_message(cifar, tmp_path):
    args = _train_args(cifar, tmp_path / "run")
    proc = _run([MPIEXEC, "-n", "1", sys.executable, *args, "--seed", "1", ":",
                 "-n", "1", sys.executable, *args, "--seed", "2"], check=False, timeout=60)
    assert proc.returncode != 0
    assert "seed (rank 0: 1; rank 1: 2)" in proc.stderr
    assert proc.stderr.count("were started with different settings") == 1, proc.stderr


def test_a_killed_rank_ends_the_job_and_the_checkpoint_resumes(tmp_path):
    common = ("plain", "float64", "--epochs", "3", "--sleep", "0.05")
    proc = _api(tmp_path / "run", *common, "--kill-rank", "1", ranks=2, check=False, timeout=60)
    assert proc.returncode != 0 and proc.elapsed < 30
    # the checkpoint of epoch 1 is intact; one process continues from it
    _api(tmp_path / "run", *common, "--resume")
    assert json.loads((tmp_path / "run" / "rank0.json").read_text())["history"][0]["epoch"] == 1


def test_a_rank_raising_ends_the_job_with_its_error_printed_once(tmp_path):
    proc = _api(tmp_path / "run", "plain", "float64", "--epochs", "3", "--raise-rank", "1",
                ranks=2, check=False, timeout=60)
    assert proc.returncode != 0 and proc.elapsed < 30
    assert proc.stderr.count("rank 1 of 2 failed") == 1, proc.stderr
    assert "planned failure of this rank" in proc.stderr


def _cuda_devices() -> int:
    try:
        import cupy
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_devices() < 2, reason="needs 2 CUDA devices (fewer answer here)")
@pytest.mark.skipif(not dist.nccl.nccl_available(), reason="CuPy cannot load libnccl")
def test_two_gpus_over_nccl_train_the_one_gpu_parameters(tmp_path):
    common = ("plain", "float64", "--n", "69", "--epochs", "2", "--device", "cuda")
    _api(tmp_path / "one", *common)
    _api(tmp_path / "two", *common, ranks=2)
    (r0, log0), (_, log1) = _rank(tmp_path / "two", 0), _rank(tmp_path / "two", 1)
    assert log0["backend"] == "nccl" and log0["checksum"] == log1["checksum"]
    assert _rel(_rank(tmp_path / "one", 0)[0], r0) < 1e-10


def test_ranks_on_one_host_split_its_cpus_between_their_worker_threads():
    """Two CPU ranks on one host run half the default worker threads each (one thread per
    core for the job, not two); a user's GPUCONV_NUM_THREADS is kept."""
    code = ("import json, gpuconv.distributed as d; from gpuconv.backend import threads; "
            "c = d.init(device='cpu'); rows = c.allgather_object("
            "[c.rank, c.local_size, threads.available_cpus(), threads.num_threads()]); "
            "c.rank or print(json.dumps(rows))")
    rows = json.loads(_run([sys.executable, "-c", code], ranks=2).stdout.strip().splitlines()[-1])
    assert [r[0] for r in rows] == [0, 1]
    for rank, local_size, cpus, workers in rows:
        assert local_size == 2 and workers == max(1, cpus // 2)
