"""``gpuconv bench --nproc N``: the seed-CNN step on N MPI ranks next to one gpuconv process
and PyTorch, each in its own processes, alternated over rounds (gpuconv.bench.nproc and
gpuconv.bench.steps). A real ``mpiexec -n 2`` run with tiny settings (skipped with the
reason where mpi4py or mpiexec is missing), the step measurement in this process, the
table's allreduce column, and the settings refused with one line and exit code 2.

No timing is asserted: the figures depend on the machine.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gpuconv import distributed as dist
from gpuconv.bench.report import format_table
from gpuconv.bench.steps import measure
from gpuconv.cli import main

from test_bench import HAS_TORCH, REPORT_KEYS, ROW_KEYS
from test_output_width import assert_fits, run_in_pty

MPIEXEC = dist.find_mpiexec()


@pytest.mark.skipif(not dist.mpi4py_installed(),
                    reason="mpi4py is not installed (pip install -e '.[mpi]')")
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec beside python or on PATH")
@pytest.mark.skipif(dist.launched_by_mpi(), reason="already inside an MPI job")
def test_nproc_2_gives_the_ranks_one_process_and_torch_rows_alternated(tmp_path):
    rc, out = run_in_pty(["bench", "--nproc", "2", "--batch-sizes", "4", "--reps", "1",
                          "--warmup", "1", "--rounds", "2", "--cooldown", "0", "--json",
                          "b.json"], 80, tmp_path, timeout=180)
    assert rc == 0, out
    assert_fits(out, 80)
    report = json.loads((tmp_path / "b.json").read_text())
    assert set(report) == REPORT_KEYS
    assert report["settings"]["nproc"] == 2 and report["settings"]["world_size"] == 2
    names = ["gpuconv-2ranks", "gpuconv-numpy"] + (["torch-cpu"] if HAS_TORCH else [])
    rows = report["results"]
    assert [r["backend"] for r in rows] == names
    assert [r["world_size"] for r in rows] == [2] + [1] * (len(names) - 1)
    for row in rows:
        assert set(row) == ROW_KEYS and row["error"] is None, row
        assert row["workload"] == "seed-cnn:train" and row["batch"] == 4
        assert row["reps"] == 2 and len(row["round_medians_ms"]) == 2  # 1 step x 2 rounds
        assert row["images_per_s"] > 0
    ranks = rows[0]
    assert 0 < ranks["allreduce_ms"] < ranks["median_ms"]
    assert ranks["allreduce_fraction"] == pytest.approx(ranks["allreduce_ms"]
                                                        / ranks["median_ms"])
    assert all(r["allreduce_ms"] is None for r in rows[1:])
    threads = report["machine"]["process_threads"]
    assert set(threads) == set(names) and threads["gpuconv-2ranks"]["OMP_NUM_THREADS"] == "1"
    if HAS_TORCH:
        assert report["torch"]["torch"] and all(r["ratio_vs_torch"] > 0 for r in rows[:2])
    # the processes ran in turn, A B C A B C, and the table has the allreduce column
    order = re.findall(r"\[\d+/\d+\] seed-cnn:train batch 4 (\S+):", out)
    assert order == names * 2
    assert "allreduce" in out and "gpuconv-2ranks" in out


def test_the_step_measurement_in_one_process():
    result = measure("gpuconv", 4, warmup=1, reps=2)
    assert result["backend"] == "gpuconv-numpy" and result["world_size"] == 1
    assert len(result["times"]) == 2 and all(t > 0 for t in result["times"])
    assert result["allreduce"] is None and result["error"] is None
    assert result["memory_bytes"] > 0 and result["threads"]["gpuconv_workers"] >= 1
    with pytest.raises(ValueError, match="multiple of"):
        measure("gpuconv", 3, 1, 1, comm=type("Two", (dist.SingleProcess,), {"size": 2})())


def test_the_table_shows_the_allreduce_share_and_fits_80_columns():
    base = {"workload": "seed-cnn:train", "batch": 128, "framework": "gpuconv", "error": None,
            "median_ms": 200.0, "min_ms": 190.0, "max_ms": 230.0, "images_per_s": 640.0,
            "gflops": None, "peak_fraction": None, "peak_memory_bytes": 2**25}
    rows = [{**base, "backend": "gpuconv-2ranks", "ratio_vs_torch": 1.1,
             "allreduce_fraction": 0.041},
            {**base, "backend": "gpuconv-numpy", "ratio_vs_torch": 0.6,
             "allreduce_fraction": None},
            {**base, "backend": "torch-cpu", "framework": "torch", "ratio_vs_torch": None,
             "allreduce_fraction": None}]
    table = format_table(rows, 79)
    assert all(len(line) <= 79 for line in table.splitlines())
    header, _, first = table.splitlines()[:3]
    assert header.split()[-2:] == ["torch", "allreduce"] and first.split()[-2:] == ["1.10x",
                                                                                 "4.1%"]
    assert "allreduce" not in format_table(rows[1:], 79)  # one-process runs: no such column


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("value", ["0", "-2", "2.5", "two"])
def test_bad_nproc_values_exit_2(capsys, value):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--nproc", value])
    assert stop.value.code == 2
    assert "--nproc: expected an integer >= 1" in _error_line(capsys)


def test_a_global_batch_that_does_not_divide_exits_2(capsys):
    assert main(["bench", "--nproc", "3", "--no-torch"]) == 2  # the default batch, 128
    line = _error_line(capsys)
    assert "global batch 128" in line and "multiple of 3" in line
    assert main(["bench", "--nproc", "2", "--batch-sizes", "64,65", "--no-torch"]) == 2
    assert "global batch 65" in _error_line(capsys)


def test_nproc_without_mpi4py_names_the_mpi_extra(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(dist, "mpi4py_installed", lambda: False)
    monkeypatch.setattr(dist, "launched_by_mpi", lambda: False)
    assert main(["bench", "--nproc", "2", "--no-torch", "--json", "unused.json"]) == 2
    line = _error_line(capsys)
    assert "--nproc 2" in line and "mpi4py" in line and "gpuconv[mpi]" in line
    assert not Path("unused.json").exists()
