"""One result row of the benchmark: a backend's case built and warmed up, then its timings
summarised (median, range, images/s, GFLOP/s) in the row format of the JSON report."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .cases import Backend, Case
from .stats import summarize
from .workloads import Workload

__all__ = ["SCHEMA", "Prepared", "prepare", "result_row", "describe_error", "add_ratios"]

SCHEMA = "gpuconv-bench/1"  # the format of the JSON report


@dataclass
class Prepared:
    """A backend's case once built and warmed up (or why not), and its timed seconds."""

    backend: Backend
    case: Case | None = None
    memory: int | None = None
    memory_method: str | None = None
    error: str | None = None
    times: list[float] = field(default_factory=list)


def describe_error(exc: BaseException) -> str:
    """``"Type: message"``, first line only, at most 300 characters (a row's error)."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def prepare(backend: Backend, workload: Workload, inputs: dict, warmup: int,
            catch: bool = True) -> Prepared:
    """Build the case and run the warm-ups under the backend's memory probe. An error
    becomes the row's (``catch=False``: it is raised, e.g. on an MPI rank, where the
    other ranks would otherwise wait for this one in a collective)."""
    prepared = Prepared(backend)
    probe = backend.memory_probe()
    prepared.memory_method = getattr(probe, "method", None)
    probe.start()
    try:
        prepared.case = backend.build(workload, inputs)
        for _ in range(warmup):
            prepared.case.timer.measure(prepared.case.step)
    except Exception as exc:  # e.g. out of memory: report the row, keep benchmarking
        if not catch:
            raise
        prepared.case, prepared.error = None, describe_error(exc)
    finally:
        try:
            prepared.memory = probe.stop()
        except Exception:
            prepared.memory = None
    return prepared


def result_row(workload: Workload, batch: int, p: Prepared, timer_kind: str | None,
               peak_gflops: float | None) -> dict[str, Any]:
    """The report's row for ``p``'s timings at ``batch`` (the global batch: images/s are
    the whole job's). ``world_size`` and the ``allreduce_*`` keys are filled by
    ``--nproc`` runs (1 and None for one process); ``round_medians_ms`` by runs whose
    repetitions come from several processes started in turn."""
    row: dict[str, Any] = {
        "workload": workload.name, "group": workload.group, "mode": workload.mode,
        "batch": batch, "device": p.backend.device, "backend": p.backend.name,
        "framework": p.backend.framework, "timer": timer_kind, "reps": len(p.times),
        "times_ms": [t * 1e3 for t in p.times], "median_ms": None, "min_ms": None,
        "max_ms": None, "mean_ms": None, "images_per_s": None, "images_per_s_min": None,
        "images_per_s_max": None, "flops": workload.flops(batch), "gflops": None,
        "gflops_min": None, "gflops_max": None, "peak_fraction": None,
        "peak_memory_bytes": p.memory, "memory_method": p.memory_method,
        "ratio_vs_torch": None, "world_size": 1, "allreduce_ms": None,
        "allreduce_fraction": None, "round_medians_ms": None, "error": p.error,
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


def report(config: Any, machine: dict, torch_info: Any, reference: dict, peaks: dict,
           workloads: list[Workload], results: list[dict], notes: list[str], elapsed_s: float,
           **settings: Any) -> dict[str, Any]:
    """The JSON report of a bench run: ``config`` (a dataclass with ``command``) and
    ``settings`` (extra entries, e.g. ``devices``) as its settings, then the rest as given."""
    return {
        "schema": SCHEMA,
        "created": machine["date"],
        "command": " ".join(config.command),
        "argv": list(config.command),
        "settings": {**{k: (list(v) if isinstance(v, (tuple, list)) else v)
                        for k, v in asdict(config).items()
                        if k not in ("command", "device_source")}, **settings},
        "machine": machine,
        "torch": torch_info,
        "reference": reference,
        "peaks": peaks,
        "workloads": [w.to_json() for w in workloads],
        "results": results,
        "notes": notes,
        "elapsed_s": elapsed_s,
    }
