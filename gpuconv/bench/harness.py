"""The benchmark run: build every backend's case, interleave their repetitions, summarise.

For each workload, batch size and device, every backend on that device
(gpuconv and, when available, PyTorch) first builds its case and runs the
warm-up repetitions while its memory probe watches; then the timed
repetitions alternate between the backends (A B A B ...), so slow drifts and
bursts of noise on the machine hit all of them alike. Python's garbage
collector is paused during the timed repetitions.

On the CPU, each switch to another backend is preceded by an untimed pause
(``cooldown``): the thread pools of one library (OpenBLAS, PyTorch's OpenMP)
keep spinning on the cores for a while after their last call, and would
otherwise steal those cores from the next backend in the same process.
OpenBLAS's workers busy-wait 2**28 cycles (~0.11 s at 2.5 GHz) after a
GEMM: measured on the 2-core CI machine, a PyTorch seed-CNN step right
after a NumPy GEMM took 245 ms, 207-234 ms after a 0.1 s pause, and
153-162 ms after 0.15 s or more; hence the default of 0.25 s.
"""
from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..backend import (cuda_is_available, cuda_unavailable_reason, get_device, keep_freed_memory,
                       own_cpu_threads)
from ..training.console import terminal_width, wrap_text
from .cases import Backend, gpuconv_backend
from .machine import busy_note, machine_info
from .nproc import run_ranks
from .peak import measure_sgemm_peak
from .reference import Reference, load_reference
from .rows import SCHEMA, add_ratios, describe_error, prepare, report, result_row
from .timing import CpuTimer, cupy_event_timer
from .workloads import Workload, all_workloads, make_inputs, runs_on, select

__all__ = ["SCHEMA", "BenchConfig", "resolve_devices", "measure_group", "add_ratios",
           "measure_peaks", "run"]

DEVICE_CHOICES = ("cpu", "cuda", "all")
# sgemm peak matrix sizes: big enough to saturate the device, small enough to be quick
PEAK_SIZES = {"cpu": 2048, "cuda": 8192}


@dataclass
class BenchConfig:
    """Everything a run needs; the CLI fills it from its flags."""

    batch_sizes: Sequence[int] = (64, 128, 256)
    reps: int = 10
    warmup: int = 2
    device: str = "all"
    workloads: Sequence[str] = ()
    tiny: bool = False
    quick: bool = False
    use_torch: bool = True
    reference: str | None = None
    dtype: str = "float32"
    peak_size: int | None = None  # None: PEAK_SIZES per device
    peak_reps: int = 5
    cooldown: float = 0.25  # seconds of pause before switching backends on the CPU (see above)
    nproc: int = 1  # > 1: the seed-CNN training step on this many MPI ranks (see nproc.py)
    rounds: int = 3  # nproc > 1: each process is started this many times, in turn
    command: list[str] = field(default_factory=lambda: list(sys.argv))
    #: where ``device`` came from, for messages (``--device cuda``, ``GPUCONV_DEVICE=cuda``;
    #: None: ``--device DEVICE``); not a setting, so not in the report
    device_source: str | None = None

    def validate(self) -> None:
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise ValueError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")
        if self.reps < 1 or self.warmup < 1:
            raise ValueError(f"reps and warmup must be >= 1, got reps={self.reps}, "
                             f"warmup={self.warmup}")
        if self.device not in DEVICE_CHOICES:
            raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {self.device!r}")
        if not self.cooldown >= 0:
            raise ValueError(f"cooldown must be >= 0 seconds, got {self.cooldown}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.nproc < 1 or self.rounds < 1:
            raise ValueError(f"nproc and rounds must be >= 1, got nproc={self.nproc}, "
                             f"rounds={self.rounds}")


def resolve_devices(spec: str, source: str | None = None) -> tuple[list[str], list[str]]:
    """``(devices, notes)`` for ``cpu`` / ``cuda`` / ``all``; ``cuda`` without a GPU raises
    RuntimeError with the reason (naming ``source``, default ``--device cuda``), ``all``
    then benchmarks the CPU only and says why."""
    if spec == "cpu":
        return ["cpu"], []
    if cuda_is_available():
        return (["cuda"] if spec == "cuda" else ["cpu", "cuda"]), []
    reason = cuda_unavailable_reason()
    if spec == "cuda":
        raise RuntimeError(f"{source or '--device cuda'}: CUDA is not usable here ({reason})")
    return ["cpu"], [f"CUDA skipped: {reason}"]


def measure_peaks(devices: Sequence[str], size: int | None, reps: int) -> dict[str, dict]:
    """The sgemm peak of each device (numpy on the CPU, cupy with CUDA events on the GPU);
    ``size`` None uses :data:`PEAK_SIZES`."""
    peaks = {}
    for device in devices:
        xp = get_device(device).xp
        timer = CpuTimer() if device == "cpu" else cupy_event_timer(xp)
        peaks[device] = measure_sgemm_peak(xp, device, timer, size=size or PEAK_SIZES[device],
                                           reps=reps)
    return peaks


def measure_group(workload: Workload, batch: int, backends: Sequence[Backend], reps: int,
                  warmup: int, dtype: str = "float32", peak_gflops: float | None = None,
                  cooldown: float = 0.0,
                  sleep: Callable[[float], Any] = time.sleep) -> list[dict[str, Any]]:
    """Rows of one workload at one batch size for backends sharing a device (interleaved,
    with ``cooldown`` seconds of untimed pause before each switch of backend)."""
    inputs = make_inputs(workload, batch, dtype)
    prepared = [prepare(b, workload, inputs, warmup) for b in backends]
    live = [p for p in prepared if p.case is not None]
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    previous = prepared[-1] if prepared else None  # the last to run (its warm-ups)
    try:
        for _ in range(reps):
            for p in list(live):  # A B A B ...: each repetition visits every backend once
                if cooldown and previous is not None and previous is not p:
                    sleep(cooldown)
                previous = p
                try:
                    p.times.append(p.case.timer.measure(p.case.step))
                except Exception as exc:
                    p.error, p.times = describe_error(exc), []
                    live.remove(p)
    finally:
        if gc_was_enabled:
            gc.enable()
    rows = [result_row(workload, batch, p, p.case.timer.kind if p.case else None, peak_gflops)
            for p in prepared]
    for p in prepared:
        p.case = None  # free the models and device arrays before the next group
    gc.collect()
    add_ratios(rows)
    return rows


def _backends(devices: Sequence[str], reference: Reference, dtype: str,
              notes: list[str]) -> dict[str, list[Backend]]:
    groups: dict[str, list[Backend]] = {}
    for device in devices:
        group = [gpuconv_backend(device, dtype)]
        if reference.available:
            try:
                torch_backend = reference.module.make_backend(device, dtype)
            except Exception as exc:
                torch_backend = None
                notes.append(f"PyTorch on {device} unavailable: {describe_error(exc)}")
            else:
                if torch_backend is None:
                    notes.append(f"PyTorch cannot run on {device} here; its columns read n/a")
            if torch_backend is not None:
                group.append(torch_backend)
        groups[device] = group
    return groups


def _stderr(message: str) -> None:
    print(wrap_text(message, terminal_width(sys.stderr) - 1), file=sys.stderr, flush=True)


def _measure_all(config: BenchConfig, workloads: Sequence[Workload], devices: Sequence[str],
                 groups: dict[str, list[Backend]], peaks: dict[str, dict],
                 log: Callable[[str], None]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    def batches(w: Workload) -> tuple[int, ...]:
        return w.batch_sizes or tuple(config.batch_sizes)

    total = sum(runs_on(w, d) * len(batches(w)) for w in workloads for d in devices)
    done = 0
    for workload in workloads:
        reps = config.reps if workload.max_reps is None else min(config.reps, workload.max_reps)
        for batch in batches(workload):
            for device in [d for d in devices if runs_on(workload, d)]:
                rows = measure_group(workload, int(batch), groups[device], reps,
                                     config.warmup, config.dtype, peaks[device]["gflops"],
                                     config.cooldown if device == "cpu" else 0.0)
                results.extend(rows)
                done += 1
                summary = ", ".join(
                    f"{r['backend']} " + (f"{r['median_ms']:.3g} ms" if r["error"] is None
                                          else "error") for r in rows)
                log(f"[{done}/{total}] {workload.name} batch {batch} {device}: {summary}")
    return results


def run(config: BenchConfig, log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Run the whole benchmark; returns the report (see ``benchmarks/README.md``).
    ``config.nproc`` > 1 runs the data-parallel comparison instead
    (:func:`gpuconv.bench.nproc.run_ranks`)."""
    config.validate()
    if config.nproc > 1:
        return run_ranks(config, log)
    started = time.perf_counter()
    # the allocator setting fit() uses; applied before any backend runs, so PyTorch
    # (same process, same malloc) is measured under the same conditions
    malloc_tuned = keep_freed_memory()
    devices, notes = resolve_devices(config.device, config.device_source)
    if not malloc_tuned:
        notes.append("glibc malloc tuning not applied (GPUCONV_MALLOC_TUNING=0 or not glibc)")
    workloads = select(all_workloads(config.tiny), config.workloads)
    for w in [w for w in workloads if not any(runs_on(w, d) for d in devices)]:
        workloads.remove(w)
        notes.append(f"{w.name} left out: it runs only on {', '.join(w.devices or ())}"
                     + (" (NumPy has no float16 BLAS)" if w.mode == "train-amp" else ""))
    if config.use_torch:
        reference = load_reference(config.reference)
    else:
        reference = Reference(None, None, "PyTorch disabled (--no-torch)")
    if reference.note:
        notes.append(reference.note)
    torch_info = None
    if reference.available:
        try:
            torch_info = reference.module.info()
        except Exception as exc:
            notes.append(f"PyTorch reference info() failed: {describe_error(exc)}")
    groups = _backends(devices, reference, config.dtype, notes)
    machine = machine_info(devices)
    busy = busy_note(machine)
    if busy:
        notes.append(busy)
    for note in notes:
        log(f"note: {note}")
    log("measuring the float32 GEMM peak ...")
    peaks = measure_peaks(devices, config.peak_size, config.peak_reps)
    # everything alive now (imported modules: torch has many objects) is exempt from the
    # collections between groups, which would otherwise take a large part of a quick run
    gc.collect()
    gc.freeze()
    try:
        with own_cpu_threads():  # as fit() runs: gpuconv's CPU workers, BLAS at one thread
            results = _measure_all(config, workloads, devices, groups, peaks, log)
    finally:
        gc.unfreeze()
    return report(config, machine, torch_info,
                  {"available": reference.available, "path": reference.path,
                   "note": reference.note or None},
                  peaks, workloads, results, notes, time.perf_counter() - started,
                  devices=devices)
