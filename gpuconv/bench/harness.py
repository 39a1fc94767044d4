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
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from ..backend import (cuda_is_available, cuda_unavailable_reason, get_device, keep_freed_memory,
                       own_cpu_threads)
from ..training.console import terminal_width, wrap_text
from .cases import Backend, Case, gpuconv_backend
from .machine import machine_info
from .peak import measure_sgemm_peak
from .reference import Reference, load_reference
from .stats import summarize
from .timing import CpuTimer, cupy_event_timer
from .workloads import Workload, all_workloads, make_inputs, runs_on, select

__all__ = ["SCHEMA", "BenchConfig", "resolve_devices", "measure_group", "add_ratios",
           "measure_peaks", "run"]

SCHEMA = "gpuconv-bench/1"
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
    command: list[str] = field(default_factory=lambda: list(sys.argv))

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


def resolve_devices(spec: str) -> tuple[list[str], list[str]]:
    """``(devices, notes)`` for ``cpu`` / ``cuda`` / ``all``; ``cuda`` without a GPU raises
    RuntimeError with the reason, ``all`` then benchmarks the CPU only and says why."""
    if spec == "cpu":
        return ["cpu"], []
    if cuda_is_available():
        return (["cuda"] if spec == "cuda" else ["cpu", "cuda"]), []
    reason = cuda_unavailable_reason()
    if spec == "cuda":
        raise RuntimeError(f"--device cuda: CUDA is not usable here ({reason})")
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


@dataclass
class _Prepared:
    backend: Backend
    case: Case | None = None
    memory: int | None = None
    memory_method: str | None = None
    error: str | None = None
    times: list[float] = field(default_factory=list)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _prepare(backend: Backend, workload: Workload, inputs: dict, warmup: int) -> _Prepared:
    """Build the case and run the warm-ups under the backend's memory probe."""
    prepared = _Prepared(backend)
    probe = backend.memory_probe()
    prepared.memory_method = getattr(probe, "method", None)
    probe.start()
    try:
        prepared.case = backend.build(workload, inputs)
        for _ in range(warmup):
            prepared.case.timer.measure(prepared.case.step)
    except Exception as exc:  # e.g. out of memory: report the row, keep benchmarking
        prepared.case, prepared.error = None, _describe(exc)
    finally:
        try:
            prepared.memory = probe.stop()
        except Exception:
            prepared.memory = None
    return prepared


def _row(workload: Workload, batch: int, p: _Prepared, timer_kind: str | None,
         peak_gflops: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "workload": workload.name, "group": workload.group, "mode": workload.mode,
        "batch": batch, "device": p.backend.device, "backend": p.backend.name,
        "framework": p.backend.framework, "timer": timer_kind, "reps": len(p.times),
        "times_ms": [t * 1e3 for t in p.times], "median_ms": None, "min_ms": None,
        "max_ms": None, "mean_ms": None, "images_per_s": None, "images_per_s_min": None,
        "images_per_s_max": None, "flops": workload.flops(batch), "gflops": None,
        "gflops_min": None, "gflops_max": None, "peak_fraction": None,
        "peak_memory_bytes": p.memory, "memory_method": p.memory_method,
        "ratio_vs_torch": None, "error": p.error,
    }
    if p.error is not None or not p.times:
        return row
    seconds = summarize([max(t, 1e-9) for t in p.times])  # a coarse clock may read 0
    ms = seconds.scaled(1e3)
    images = seconds.rate(batch)
    row.update(median_ms=ms.median, min_ms=ms.min, max_ms=ms.max, mean_ms=ms.mean,
               images_per_s=images.median, images_per_s_min=images.min,
               images_per_s_max=images.max)
    if row["flops"] is not None:
        gflops = seconds.rate(row["flops"] / 1e9)
        row.update(gflops=gflops.median, gflops_min=gflops.min, gflops_max=gflops.max)
        if peak_gflops:
            row["peak_fraction"] = gflops.median / peak_gflops
    return row


def measure_group(workload: Workload, batch: int, backends: Sequence[Backend], reps: int,
                  warmup: int, dtype: str = "float32", peak_gflops: float | None = None,
                  cooldown: float = 0.0,
                  sleep: Callable[[float], Any] = time.sleep) -> list[dict[str, Any]]:
    """Rows of one workload at one batch size for backends sharing a device (interleaved,
    with ``cooldown`` seconds of untimed pause before each switch of backend)."""
    inputs = make_inputs(workload, batch, dtype)
    prepared = [_prepare(b, workload, inputs, warmup) for b in backends]
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
                    p.error, p.times = _describe(exc), []
                    live.remove(p)
    finally:
        if gc_was_enabled:
            gc.enable()
    rows = [_row(workload, batch, p, p.case.timer.kind if p.case else None, peak_gflops)
            for p in prepared]
    for p in prepared:
        p.case = None  # free the models and device arrays before the next group
    gc.collect()
    add_ratios(rows)
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Set ``ratio_vs_torch`` = torch median time / gpuconv median time (> 1: gpuconv is
    faster, i.e. the throughput ratio) on gpuconv rows that have a torch row alongside."""
    for row in rows:
        if row["framework"] == "torch" or row["median_ms"] is None:
            continue
        ref = next((r for r in rows if r["framework"] == "torch" and r["device"] == row["device"]
                    and r["workload"] == row["workload"] and r["batch"] == row["batch"]
                    and r["median_ms"] is not None), None)
        if ref is not None:
            row["ratio_vs_torch"] = ref["median_ms"] / row["median_ms"]


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
                notes.append(f"PyTorch on {device} unavailable: {_describe(exc)}")
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
    """Run the whole benchmark; returns the report (see ``benchmarks/README.md``)."""
    config.validate()
    started = time.perf_counter()
    # the allocator setting fit() uses; applied before any backend runs, so PyTorch
    # (same process, same malloc) is measured under the same conditions
    malloc_tuned = keep_freed_memory()
    devices, notes = resolve_devices(config.device)
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
            notes.append(f"PyTorch reference info() failed: {_describe(exc)}")
    groups = _backends(devices, reference, config.dtype, notes)
    machine = machine_info(devices)
    load, cores = machine.get("load_average"), machine.get("cpu_affinity") or machine["cpu_count"]
    if load and cores and load[0] > 0.5 * cores:
        notes.append(f"the machine is busy (load average {load[0]} on {cores} cores): CPU "
                     "timings are noisy; benchmark on a quiet machine for figures to publish")
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
    return {
        "schema": SCHEMA,
        "created": machine["date"],
        "command": " ".join(config.command),
        "argv": list(config.command),
        "settings": {**{k: (list(v) if isinstance(v, (tuple, list)) else v)
                        for k, v in asdict(config).items() if k != "command"},
                     "devices": devices},
        "machine": machine,
        "torch": torch_info,
        "reference": {"available": reference.available, "path": reference.path,
                      "note": reference.note or None},
        "peaks": peaks,
        "workloads": [w.to_json() for w in workloads],
        "results": results,
        "notes": notes,
        "elapsed_s": time.perf_counter() - started,
    }
