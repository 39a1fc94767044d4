"""Timers and peak-memory probes shared by every benchmarked backend.

Timers measure one call of a workload and return seconds:

- :class:`CpuTimer`: ``time.perf_counter`` around the call (NumPy runs
  synchronously, and so does PyTorch on the CPU).
- :class:`EventTimer`: CUDA events recorded on the current stream before and
  after the call, then ``end.synchronize()`` and the elapsed time between the
  two events. Built for CuPy by :func:`cupy_event_timer`; the PyTorch
  reference builds one from ``torch.cuda.Event``. The device is synchronised
  before the start event so earlier queued work is not counted.

Memory probes report the peak bytes a backend had in use at once while a
case was built and warmed up (:class:`TracemallocProbe` for NumPy, which
reports its allocations to :mod:`tracemalloc`; :class:`CupyUsedBytesProbe`
for CuPy: a ``cupy.cuda.MemoryHook`` counting the bytes its memory pool hands
out and takes back, :class:`UsedBytes`, the counterpart of PyTorch's
``torch.cuda.max_memory_allocated``; blocks the pool keeps cached for reuse
are not in use and not counted). Probes run outside the timed repetitions,
since tracing slows every allocation.
"""
from __future__ import annotations

import time
import tracemalloc
from types import ModuleType
from typing import Any, Callable, Protocol

__all__ = ["Timer", "CpuTimer", "EventTimer", "cupy_event_timer", "MemoryProbe", "NullProbe",
           "TracemallocProbe", "UsedBytes", "used_bytes_hook", "CupyUsedBytesProbe"]


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


class UsedBytes:
    """The bookkeeping of a CuPy memory hook: bytes in use and their peak.

    CuPy calls ``malloc_postprocess`` after its memory pool hands out a block
    and ``free_postprocess`` after a block goes back to the pool, each with
    keyword arguments (``device_id``, ``mem_size``: the block's bytes, rounded
    up to CuPy's 512-byte unit, ``mem_ptr``: 0 when the allocation failed, ...).
    ``current`` is the bytes handed out minus the bytes given back since this
    object was made, ``peak`` its maximum: with the bytes in use at the start as
    zero, what ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()``
    at ``reset_peak_memory_stats()`` is for PyTorch (which rounds to 512 bytes
    too). A block allocated before and freed after the start lowers ``current``
    below zero, as it lowers PyTorch's ``memory_allocated``. ``device_id``:
    count that device only (None: all). A plain class: :func:`used_bytes_hook`
    makes it a ``cupy.cuda.MemoryHook``; tests call these methods directly.
    """

    name = "gpuconv_bench_used_bytes"  # the key CuPy registers the hook under

    def __init__(self, device_id: int | None = None) -> None:
        self.device_id = device_id
        self.current = 0
        self.peak = 0

    def _counts(self, kwargs: dict) -> bool:
        return self.device_id is None or kwargs.get("device_id") == self.device_id

    def malloc_postprocess(self, **kwargs: Any) -> None:
        if kwargs.get("mem_ptr") and self._counts(kwargs):
            self.current += int(kwargs["mem_size"])
            self.peak = max(self.peak, self.current)

    def free_postprocess(self, **kwargs: Any) -> None:
        if self._counts(kwargs):
            self.current -= int(kwargs["mem_size"])


def used_bytes_hook(cupy: ModuleType, device_id: int | None = None) -> Any:
    """A :class:`UsedBytes` that is also a ``cupy.cuda.MemoryHook`` (the other hook
    methods are CuPy's no-ops); ``with hook:`` registers it for the calling thread
    (CuPy keeps memory hooks per thread)."""
    hook_type = type("UsedBytesHook", (UsedBytes, cupy.cuda.MemoryHook), {})
    return hook_type(device_id)


class CupyUsedBytesProbe:
    """Peak bytes of CuPy arrays in use at once between start and stop (:class:`UsedBytes`
    on the current device, registered for the calling thread), like PyTorch's
    ``max_memory_allocated``: blocks the memory pool keeps cached after they were freed
    are not counted (the pool's ``total_bytes`` counts them)."""

    method = "cupy_memory_hook_peak_used_bytes"

    def __init__(self, cupy: ModuleType) -> None:
        self._cupy = cupy
        self._hook: Any = None

    def start(self) -> None:
        self._hook = used_bytes_hook(self._cupy, int(self._cupy.cuda.Device().id))
        self._hook.__enter__()

    def stop(self) -> int | None:
        hook, self._hook = self._hook, None
        if hook is None:
            return None
        hook.__exit__(None, None, None)
        return max(int(hook.peak), 0)
