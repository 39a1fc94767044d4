"""Timers and peak-memory probes shared by every benchmarked backend.

Timers measure one call of a workload and return seconds:

- :class:`CpuTimer`: ``time.perf_counter`` around the call (NumPy runs
  synchronously, and so does PyTorch on the CPU).
- :class:`EventTimer`: CUDA events recorded on the current stream before and
  after the call, then ``end.synchronize()`` and the elapsed time between the
  two events. Built for CuPy by :func:`cupy_event_timer`; the PyTorch
  reference builds one from ``torch.cuda.Event``. The device is synchronised
  before the start event so earlier queued work is not counted.

Memory probes report the peak bytes a backend used while a case was built
and warmed up (:class:`TracemallocProbe` for NumPy, which reports its
allocations to :mod:`tracemalloc`; :class:`CupyPoolProbe` for CuPy's memory
pool). Probes run outside the timed repetitions, since tracing slows every
allocation.
"""
from __future__ import annotations

import time
import tracemalloc
from types import ModuleType
from typing import Any, Callable, Protocol

__all__ = ["Timer", "CpuTimer", "EventTimer", "cupy_event_timer", "MemoryProbe", "NullProbe",
           "TracemallocProbe", "CupyPoolProbe"]


class Timer(Protocol):
    """Something that times one call: ``measure(fn) -> seconds``."""

    kind: str

    def measure(self, fn: Callable[[], Any]) -> float: ...


class CpuTimer:
    """Wall-clock time of one call with ``time.perf_counter`` (or another clock)."""

    kind = "perf_counter"

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock

    def measure(self, fn: Callable[[], Any]) -> float:
        start = self._clock()
        fn()
        return self._clock() - start


class EventTimer:
    """Device time of one call between two CUDA events.

    ``make_event()`` returns an event with ``record()`` and ``synchronize()``
    (``cupy.cuda.Event()``, ``torch.cuda.Event(enable_timing=True)``);
    ``elapsed_ms(start, end)`` returns milliseconds between two recorded
    events; ``synchronize()`` (optional) waits for the whole device before
    the start event is recorded.
    """

    kind = "cuda_events"

    def __init__(self, make_event: Callable[[], Any], elapsed_ms: Callable[[Any, Any], float],
                 synchronize: Callable[[], Any] | None = None) -> None:
        self._start = make_event()
        self._end = make_event()
        self._elapsed_ms = elapsed_ms
        self._synchronize = synchronize

    def measure(self, fn: Callable[[], Any]) -> float:
        if self._synchronize is not None:
            self._synchronize()
        self._start.record()
        fn()
        self._end.record()
        self._end.synchronize()  # host waits until the GPU has passed the end event
        return float(self._elapsed_ms(self._start, self._end)) / 1e3


def cupy_event_timer(cupy: ModuleType) -> EventTimer:
    """An :class:`EventTimer` on CuPy's current device and stream."""
    return EventTimer(cupy.cuda.Event, cupy.cuda.get_elapsed_time,
                      lambda: cupy.cuda.Device().synchronize())


class MemoryProbe(Protocol):
    """``start()`` before a case is built; ``stop()`` returns the peak bytes since (or None)."""

    method: str

    def start(self) -> None: ...

    def stop(self) -> int | None: ...


class NullProbe:
    """No memory figure for this backend (reported as n/a)."""

    method = "n/a"

    def start(self) -> None:
        pass

    def stop(self) -> int | None:
        return None


class TracemallocProbe:
    """Peak bytes traced by :mod:`tracemalloc` between start and stop.

    NumPy registers its array buffers with tracemalloc, so this is the peak
    of NumPy arrays (plus small Python objects) allocated after ``start`` and
    alive at the same time: inputs, parameters, optimizer state, caches and
    temporaries of the case. Memory allocated before ``start`` is not counted.
    """

    method = "tracemalloc"

    def __init__(self) -> None:
        self._owner = False
        self._base = 0

    def start(self) -> None:
        self._owner = not tracemalloc.is_tracing()
        if self._owner:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self._base = tracemalloc.get_traced_memory()[0]

    def stop(self) -> int | None:
        peak = tracemalloc.get_traced_memory()[1]
        if self._owner:
            tracemalloc.stop()
            self._owner = False
        return max(int(peak - self._base), 0)


class CupyPoolProbe:
    """Growth of CuPy's default memory pool (``total_bytes``) between start and stop.

    ``start`` frees the pool's cached blocks, so afterwards the pool holds
    only live arrays; the pool then grows to the most bytes the case ever had
    in use at once (rounded up to CuPy's allocation units), which is what
    ``stop`` reports. CuPy's pool keeps no peak counter of its own.
    """

    method = "cupy_pool_total_bytes"

    def __init__(self, cupy: ModuleType) -> None:
        self._cupy = cupy
        self._base = 0

    def start(self) -> None:
        self._cupy.cuda.Device().synchronize()
        pool = self._cupy.get_default_memory_pool()
        pool.free_all_blocks()
        self._base = int(pool.total_bytes())

    def stop(self) -> int | None:
        self._cupy.cuda.Device().synchronize()
        return max(int(self._cupy.get_default_memory_pool().total_bytes()) - self._base, 0)
