"""N ranks as N threads of one process, for testing collectives without MPI.

``run_ranks(size, fn)`` calls ``fn(comm)`` on ``size`` threads, each with a
:class:`ThreadComm` of that rank, and returns their results in rank order
(re-raising the first error). Allreduce/broadcast follow the communicator
contract of gpuconv.distributed (in place, NumPy and fake-CuPy arrays).
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import numpy

from gpuconv.backend import get_array_module
from gpuconv.distributed import Communicator


class Shared:
    """What ``size`` thread ranks share: a barrier and one slot per rank."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=20)
        self.slots: list[Any] = [None] * size
        self.calls = 0

    def exchange(self, rank: int, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (all ranks must call it)."""
        self.barrier.wait()
        self.slots[rank] = value
        self.barrier.wait()
        values = list(self.slots)
        self.barrier.wait()
        return values


class ThreadComm(Communicator):
    backend = "threads"

    def __init__(self, shared: Shared, rank: int) -> None:
        super().__init__()
        self.shared, self.rank, self.size = shared, rank, shared.size
        self.local_rank, self.local_size = rank, shared.size
        self.allreduce_calls = 0

    def _exchange(self, value: Any) -> list[Any]:
        return self.shared.exchange(self.rank, value)

    def allreduce_sum(self, arrays):
        self.allreduce_calls += 1
        for a in arrays:
            xp = get_array_module(a)
            host = numpy.array(a.get() if hasattr(a, "get") else a, copy=True)
            values = self._exchange(host)
            total = values[0].copy()
            for v in values[1:]:
                total += v
            a[...] = xp.asarray(total) if xp is not numpy else total
        return list(arrays)

    def broadcast(self, arrays, root=0):
        for a in arrays:
            xp = get_array_module(a)
            host = numpy.array(a.get() if hasattr(a, "get") else a, copy=True)
            value = self._exchange(host)[root]
            a[...] = xp.asarray(value) if xp is not numpy else value
        return list(arrays)

    def barrier(self):
        self.shared.barrier.wait()

    def broadcast_object(self, obj, root=0):
        return self._exchange(obj)[root]

    def allgather_object(self, obj):
        return self._exchange(obj)


def run_ranks(size: int, fn: Callable[[ThreadComm], Any]) -> list[Any]:
    shared = Shared(size)
    results: list[Any] = [None] * size
    errors: list[BaseException] = []

    def target(rank: int) -> None:
        try:
            results[rank] = fn(ThreadComm(shared, rank))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
            shared.barrier.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    if errors:
        raise errors[0]
    return results
