"""``gpuconv bench --nproc N``: the seed-CNN training step on N ranks against one process.

Three rows of ``seed-cnn:train`` at the same global batch (``--batch-sizes``,
default 128), each measured by its own processes (:mod:`gpuconv.bench.steps`):

- ``gpuconv-Nranks``: N ranks under the installed ``mpiexec``, B/N samples each,
  gradients averaged between backward and Adam; each rank gets one BLAS thread
  unless a thread variable is set (the environment of ``gpuconv train --nproc N``).
  A step's time is its slowest rank's; the row also gives the allreduce's share
  (its median on the rank that reached it last, over the median step).
- ``gpuconv-numpy``: gpuconv in one process, the machine's default threads;
- ``torch-cpu``: the PyTorch reference in one process, its default threads.

One round starts the three in turn (A B C), and ``rounds`` rounds run (A B C A B C
...), so slow drifts of the machine hit all rows alike; each process warms up,
times ``reps`` steps and exits, so no library's spinning threads outlive it. The
rows give the median and range over all timed steps of all rounds, and each
round's median (``round_medians_ms``).
"""
from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .. import distributed as dist
from ..cli.errors import CLIError
from ..cli.parallel import mpiexec_for
from ..distributed.env import threads_set_by_user
from ..distributed.launch import child_environment, relaunch_command
from .cases import Backend
from .machine import busy_note, machine_info
from .reference import candidate_paths
from .rows import Prepared, add_ratios, report, result_row
from .steps import TRAIN_WORKLOAD, ranks_backend_name, train_workload
from .workloads import select

__all__ = ["DEFAULT_BATCH", "check_settings", "worker_command", "run_ranks"]

DEFAULT_BATCH = 128  # the global batch when --batch-sizes is not given
#: Where the worker module is found: the repository (or site-packages) of this gpuconv.
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def check_settings(config: Any) -> str:
    """Refuse (CLIError) what ``--nproc`` cannot run; returns the mpiexec to use."""
    n = config.nproc
    if dist.launched_by_mpi():
        raise CLIError(f"--nproc {n}: run gpuconv bench outside mpiexec; it starts the "
                       "ranks itself")
    if config.device == "cuda":
        source = config.device_source or "--device cuda"
        raise CLIError(f"--nproc {n} measures on the CPU; leave out --device cuda"
                       if source.startswith("--") else
                       f"--nproc {n} measures on the CPU, not {source}; pass --device cpu "
                       "(or unset the variable)")
    if config.workloads:
        try:
            select([train_workload()], config.workloads)
        except ValueError as exc:
            raise CLIError(f"{exc} (--nproc {n} measures {TRAIN_WORKLOAD} only)") from None
    for batch in config.batch_sizes:
        if int(batch) % n:
            raise CLIError(f"--nproc {n}: global batch {batch} does not divide into {n} "
                           f"ranks; each rank trains batch/{n} samples, so the batch must "
                           f"be a multiple of {n} (e.g. --batch-sizes {max(n, batch - batch % n)})")
    return mpiexec_for(n)


def _environment(ranks: bool) -> dict[str, str]:
    """A worker's environment: this gpuconv first on the path; ranks get one BLAS
    thread each unless a thread variable is set (``child_environment``)."""
    env = child_environment() if ranks else dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(_PACKAGE_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def worker_command(framework: str, batch: int, config: Any, out: Path,
                   reference: str | None, mpiexec: str | None = None) -> list[str]:
    """The command line of one measuring process (under ``mpiexec -n N`` with ``mpiexec``)."""
    args = ["--framework", framework, "--batch", str(batch), "--warmup", str(config.warmup),
            "--reps", str(config.reps), "--dtype", config.dtype, "--out", str(out)]
    if reference:
        args += ["--reference", reference]
    if mpiexec is not None:
        return relaunch_command(mpiexec, config.nproc, args, module="gpuconv.bench.worker")
    return [sys.executable, "-m", "gpuconv.bench.worker", *args]


def _reference_path(config: Any, notes: list[str]) -> str | None:
    """The PyTorch reference file the torch process loads, or None (with a note)."""
    if not config.use_torch:
        notes.append("PyTorch disabled (--no-torch)")
        return None
    candidates = candidate_paths(config.reference)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        notes.append(f"PyTorch reference not found ({' or '.join(map(str, candidates))}); "
                     "pass --reference PATH")
        return None
    if importlib.util.find_spec("torch") is None:
        notes.append("PyTorch reference unavailable: torch is not installed")
        return None
    return str(found.resolve())


def _run_worker(command: list[str], env: dict[str, str], folder: Path,
                out: Path) -> dict[str, Any]:
    """Run one measuring process; its result, or ``{"error": ...}`` when it failed."""
    proc = subprocess.run(command, env=env, cwd=folder, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode == 0 and out.is_file():
        result = json.loads(out.read_text())
        out.unlink()
        return result
    lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    why = lines[-1] if lines else "no output"
    return {"error": f"worker exited with code {proc.returncode}: {why}"[:300]}


def _measured_elsewhere(*_: Any) -> Any:
    raise RuntimeError("measured by a worker process")


def _rows(batch: int, runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    workload = train_workload()
    rows = []
    for run in runs.values():
        p = Prepared(Backend(run["backend"], run["framework"], "cpu", _measured_elsewhere),
                     memory=run.get("memory_bytes"), memory_method=run.get("memory_method"),
                     error=run.get("error"), times=list(run["times"]))
        row = result_row(workload, batch, p, run.get("timer"), None)
        row["world_size"] = run["world_size"]
        row["round_medians_ms"] = run["round_medians_ms"]
        if run["allreduce"] and row["median_ms"]:
            reduce_ms = statistics.median(run["allreduce"]) * 1e3
            row.update(allreduce_ms=reduce_ms, allreduce_fraction=reduce_ms / row["median_ms"])
        rows.append(row)
    add_ratios(rows)
    return rows


def _add(run: dict[str, Any], result: dict[str, Any]) -> None:
    """Fold one process's result into its row's accumulated ``run``."""
    if result.get("error") and not run["error"]:
        run["error"] = result["error"]
    for key in ("timer", "memory_method"):
        run[key] = run.get(key) or result.get(key)
    if result.get("memory_bytes") is not None:
        run["memory_bytes"] = max(run.get("memory_bytes") or 0, result["memory_bytes"])
    times = result.get("times") or []
    if times and not result.get("error"):
        run["times"] += times
        run["round_medians_ms"].append(statistics.median(times) * 1e3)
        if result.get("allreduce"):
            run["allreduce"] += result["allreduce"]


def run_ranks(config: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """The ``--nproc N`` benchmark (``config``: a validated BenchConfig); the report has
    the format of :func:`gpuconv.bench.harness.run`'s."""
    mpiexec = check_settings(config)
    started = time.perf_counter()
    notes: list[str] = []
    reference = _reference_path(config, notes)
    machine = machine_info(["cpu"])
    machine["process_threads"] = {}  # per row: thread variables, gpuconv's CPU workers
    busy = busy_note(machine)
    if busy:
        notes.append(busy)
    if not threads_set_by_user():
        notes.append("each rank runs one BLAS thread (OMP_NUM_THREADS=1 ...); the single "
                     "processes keep the default threads")
    for note in notes:
        log(f"note: {note}")
    n, torch_info = config.nproc, None
    kinds = [("ranks", "gpuconv", ranks_backend_name(n), n),
             ("one", "gpuconv", "gpuconv-numpy", 1)]
    if reference:
        kinds.append(("torch", "torch", "torch-cpu", 1))
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpuconv-bench-") as tmp:
        folder = Path(tmp)
        for batch in [int(b) for b in config.batch_sizes]:
            runs = {key: {"backend": name, "framework": fw, "world_size": size, "times": [],
                          "allreduce": [], "round_medians_ms": [], "error": None}
                    for key, fw, name, size in kinds}
            total, done = config.rounds * len(kinds), 0
            for round_index in range(config.rounds):
                for key, framework, name, _size in list(kinds):
                    if key not in runs:
                        continue  # PyTorch turned out unavailable in an earlier round
                    if config.cooldown and (done or round_index):
                        time.sleep(config.cooldown)
                    out = folder / f"{key}.json"
                    command = worker_command(framework, batch, config, out, reference,
                                             mpiexec if key == "ranks" else None)
                    result = _run_worker(command, _environment(key == "ranks"), folder, out)
                    if result.get("note"):  # the reference could not run: no torch row
                        notes.append(result["note"])
                        log(f"note: {result['note']}")
                        del runs[key]
                        kinds = [k for k in kinds if k[0] != key]  # nor at later batches
                        total -= config.rounds - round_index
                        continue
                    done += 1
                    torch_info = torch_info or result.get("torch")
                    machine["process_threads"].setdefault(name, result.get("threads"))
                    _add(runs[key], result)
                    times = result.get("times") or []
                    what = (f"{statistics.median(times) * 1e3:.3g} ms" if times
                            and not result.get("error") else "error")
                    log(f"[{done}/{total}] {TRAIN_WORKLOAD} batch {batch} {name}: {what}")
            results.extend(_rows(batch, runs))
    return report(config, machine, torch_info,
                  {"available": torch_info is not None, "path": reference,
                   "note": next((x for x in notes if "PyTorch" in x), None)},
                  {}, [train_workload()], results, notes, time.perf_counter() - started,
                  devices=["cpu"], world_size=n)
