"""One measuring process of ``gpuconv bench --nproc N``: the seed-CNN training step.

``python -m gpuconv.bench.worker --framework gpuconv --batch 128 --out r.json`` (the
entry point, :mod:`gpuconv.bench.worker`, calls :func:`main` here) times
the step of :data:`TRAIN_WORKLOAD` (zero_grad, forward, softmax cross-entropy,
backward, Adam: the ``seed-cnn:train`` row of ``gpuconv bench``) in this process;
under ``mpiexec -n N`` each rank trains its contiguous shard (B/N samples) of the
same global batch and the gradients are averaged between backward and Adam with
:class:`gpuconv.distributed.GradientReducer` (one allreduce per dtype, as ``fit``).
``--framework torch`` times the PyTorch reference's step (one process). Rank 0
writes the result as JSON (:func:`measure`'s dict).

Every step starts after a barrier, so each rank's step time counts from one
common start, and a step's time is that of its slowest rank (the job waits for
it). The allreduce's time is that of the rank that reached it last, the
smallest of the ranks' (the others' include waiting for that rank's backward). The step runs under
:func:`gpuconv.backend.own_cpu_threads` and with the allocator setting of ``fit``,
as training does. ``benchmarks/distributed_step.py`` calls :func:`measure` as well.
"""
from __future__ import annotations

import argparse
import gc
import os
import time
from typing import Any, Callable, Sequence

import numpy

from .. import distributed as dist
from ..backend import keep_freed_memory, num_threads, own_cpu_threads
from ..distributed.env import THREAD_VARS
from .cases import Backend, build_gpuconv_case, gpuconv_backend
from .reference import load_reference
from .report import write_json
from .rows import Prepared, describe_error, prepare
from .timing import TracemallocProbe
from .workloads import Workload, make_inputs, model_workloads

__all__ = ["TRAIN_WORKLOAD", "FRAMEWORKS", "train_workload", "BarrierTimer", "rank_backend",
           "ranks_backend_name", "measure", "main"]

TRAIN_WORKLOAD = "seed-cnn:train"
FRAMEWORKS = ("gpuconv", "torch")


def train_workload() -> Workload:
    """The ``seed-cnn:train`` workload of the benchmark."""
    return next(w for w in model_workloads() if w.name == TRAIN_WORKLOAD)


def ranks_backend_name(size: int) -> str:
    """The row name of gpuconv on ``size`` ranks: ``gpuconv-2ranks``."""
    return f"gpuconv-{int(size)}ranks"


class BarrierTimer:
    """``perf_counter`` around one call that starts when every rank has arrived."""

    kind = "perf_counter"

    def __init__(self, comm: Any) -> None:
        self.comm = comm

    def measure(self, fn: Callable[[], Any]) -> float:
        self.comm.barrier()
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


def rank_backend(comm: Any, allreduce_times: list[float], dtype: str = "float32") -> Backend:
    """gpuconv on this rank: its shard of the global batch, rank 0's initial weights, and
    the gradients averaged over the ranks after each backward pass (the seconds of
    each such allreduce appended to ``allreduce_times``)."""

    def build(workload: Workload, inputs: dict[str, numpy.ndarray]):
        start, stop = dist.shard_bounds(len(inputs["x"]), comm.size, comm.rank)
        local = {k: v[start:stop] for k, v in inputs.items()}

        def gradient_hook(model: Any) -> Callable[[], None]:
            dist.broadcast_model(model, comm)
            reducer = dist.GradientReducer(comm, model.parameters())

            def allreduce() -> None:
                t0 = time.perf_counter()
                reducer.reduce(stop - start)
                allreduce_times.append(time.perf_counter() - t0)
            return allreduce

        return build_gpuconv_case(workload, local, "cpu", BarrierTimer(comm), dtype,
                                  gradient_hook=gradient_hook)

    return Backend(ranks_backend_name(comm.size), "gpuconv", "cpu", build, TracemallocProbe)


def _per_step(per_rank: Sequence[Sequence[float]],
              reduce: Callable[..., Any] = numpy.max) -> list[float]:
    """Step by step, ``reduce`` (default: the largest) of the ranks' values."""
    return [float(v) for v in reduce(numpy.array(per_rank, dtype=float), axis=0)]


def measure(framework: str, batch: int, warmup: int, reps: int, comm: Any = None,
            dtype: str = "float32", reference: str | None = None) -> dict[str, Any]:
    """Time ``reps`` training steps after ``warmup`` on ``comm``'s ranks (default: this
    process alone) at global batch ``batch``; the same dict on every rank.

    Keys: ``backend``, ``framework``, ``world_size``, ``batch``, ``local_batch``,
    ``times`` (seconds per step, the slowest rank's), ``allreduce`` (seconds per step,
    the last rank to reach it; None on one process), ``memory_bytes``/``memory_method`` (the
    largest rank's peak while building and warming up), ``timer``, ``error`` (gpuconv
    or PyTorch failed in one process), ``note`` (PyTorch unavailable), ``torch`` (the
    reference's ``info()``), ``threads`` (thread variables, gpuconv's CPU workers).
    """
    comm = comm if comm is not None else dist.SingleProcess()
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    if framework == "torch" and comm.size > 1:
        raise ValueError("the PyTorch reference runs in one process")
    if batch % comm.size:
        raise ValueError(f"the global batch {batch} must be a multiple of the {comm.size} "
                         "ranks")
    workload = train_workload()
    result: dict[str, Any] = {
        "framework": framework, "world_size": comm.size, "batch": batch,
        "local_batch": batch // comm.size, "warmup": warmup, "reps": reps, "times": [],
        "allreduce": None, "memory_bytes": None, "memory_method": None, "timer": None,
        "error": None, "note": None, "torch": None,
        "threads": {**{k: os.environ[k] for k in THREAD_VARS if k in os.environ},
                    "gpuconv_workers": num_threads()},
    }
    allreduce: list[float] = []
    if framework == "torch":
        ref = load_reference(reference)
        torch_backend = ref.module.make_backend("cpu", dtype) if ref.available else None
        if torch_backend is None:
            result.update(backend="torch-cpu", note=ref.note or "PyTorch cannot run here")
            return result
        backend = torch_backend
        result["torch"] = ref.module.info()
    elif comm.size == 1:
        backend = gpuconv_backend("cpu", dtype)
    else:
        backend = rank_backend(comm, allreduce, dtype)
    result["backend"] = backend.name
    inputs = make_inputs(workload, batch, dtype)
    with own_cpu_threads():
        p: Prepared = prepare(backend, workload, inputs, warmup, catch=comm.size == 1)
        allreduce.clear()  # the warm-ups'
        gc.collect()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(reps if p.case is not None else 0):
                p.times.append(p.case.timer.measure(p.case.step))
        except Exception as exc:
            if comm.size > 1:
                raise  # ends the job (dist.init's excepthook): the others wait for this rank
            p.error, p.times = describe_error(exc), []
        finally:
            if gc_was_enabled:
                gc.enable()
    result.update(timer=p.case.timer.kind if p.case is not None else None, error=p.error,
                  memory_method=p.memory_method, times=[float(t) for t in p.times])
    memories = comm.allgather_object(p.memory)
    result["memory_bytes"] = None if None in memories else max(memories)
    if comm.size > 1:
        result["times"] = _per_step(comm.allgather_object(p.times))
        result["allreduce"] = _per_step(comm.allgather_object(allreduce), numpy.min)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gpuconv.bench.worker``: measure, then rank 0 writes ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m gpuconv.bench.worker",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=FRAMEWORKS, default="gpuconv")
    parser.add_argument("--batch", type=int, default=128, help="global batch (default 128)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--reference", help="the PyTorch reference file")
    parser.add_argument("--out", required=True, help="where rank 0 writes the JSON result")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as fit() and the in-process benchmark
    comm = dist.init(device="cpu")  # several ranks: one BLAS thread each, unless set
    result = measure(args.framework, args.batch, args.warmup, args.reps, comm, args.dtype,
                     args.reference)
    if comm.rank == 0:
        write_json(args.out, result)
    return 0
