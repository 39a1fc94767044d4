"""A fake ``cupy.cuda.nccl`` for ranks that are threads of one process, on the strict fake CuPy.

It has the names gpuconv's NCCL communicator uses (``get_unique_id``,
``NcclCommunicator(ndev, commId, rank)`` with ``allReduce``/``bcast`` on raw
device pointers, the ``NCCL_*`` constants; their existence in CuPy is checked
by tests/test_nccl_names.py) and NCCL's rules that matter for correctness:

- a communicator belongs to the GPU that was current when it was created, and
  every collective must be issued with that GPU current;
- buffers are raw pointers (``a.data.ptr``) of ``count`` elements of
  ``datatype``: the fake reads and writes that memory (fake device arrays are
  host memory), so a wrong pointer, count or dtype gives wrong numbers, and a
  pointer into another GPU's array is refused;
- collectives are issued by every rank in the same order (the ranks meet at a
  barrier per call; a rank that never comes times out).
"""
from __future__ import annotations

import ctypes
import secrets
import threading

import numpy

import fakecupy
from fake_comm import Shared

available = True

NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN = 0, 1, 2, 3
(NCCL_INT8, NCCL_UINT8, NCCL_INT32, NCCL_UINT32, NCCL_INT64, NCCL_UINT64, NCCL_FLOAT16,
 NCCL_FLOAT32, NCCL_FLOAT64) = range(9)
_DTYPES = {NCCL_INT8: numpy.int8, NCCL_UINT8: numpy.uint8, NCCL_INT32: numpy.int32,
           NCCL_UINT32: numpy.uint32, NCCL_INT64: numpy.int64, NCCL_UINT64: numpy.uint64,
           NCCL_FLOAT16: numpy.float16, NCCL_FLOAT32: numpy.float32,
           NCCL_FLOAT64: numpy.float64}
_REDUCE = {NCCL_SUM: numpy.add, NCCL_PROD: numpy.multiply, NCCL_MAX: numpy.maximum,
           NCCL_MIN: numpy.minimum}

_groups: dict[tuple, Shared] = {}
_groups_lock = threading.Lock()


class NcclError(RuntimeError):
    pass


def get_unique_id() -> tuple:
    """128 small ints, as ``cupy.cuda.nccl.get_unique_id``."""
    return tuple(secrets.token_bytes(128))


class NcclCommunicator:
    """One rank of a communicator of ``ndev`` ranks; bound to the current fake GPU."""

    def __init__(self, ndev: int, commId: tuple, rank: int) -> None:
        if not 0 <= rank < ndev:
            raise NcclError(f"NCCL error: invalid rank {rank} of {ndev}")
        with _groups_lock:
            self._group = _groups.setdefault((commId, ndev), Shared(ndev))
        self._rank, self._size = rank, ndev
        self.device_id = fakecupy.current_device_id()
        self.allreduce_calls = 0

    def rank_id(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size

    def _memory(self, ptr: int, count: int, datatype: int) -> numpy.ndarray:
        """The ``count`` elements at device pointer ``ptr`` (writable, no copy)."""
        if fakecupy.current_device_id() != self.device_id:
            raise NcclError(f"NCCL: communicator of GPU {self.device_id} used with GPU "
                            f"{fakecupy.current_device_id()} current")
        owner = fakecupy.pointer_device(ptr)
        if owner is not None and owner != self.device_id:
            raise NcclError(f"NCCL: buffer on GPU {owner}, communicator on GPU {self.device_id}")
        dtype = numpy.dtype(_DTYPES[datatype])
        raw = (ctypes.c_char * (int(count) * dtype.itemsize)).from_address(int(ptr))
        return numpy.frombuffer(raw, dtype=dtype)

    def allReduce(self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int,
                  stream: int) -> None:
        self.allreduce_calls += 1
        values = self._group.exchange(self._rank,
                                      self._memory(sendbuf, count, datatype).copy())
        total = values[0].copy()
        for v in values[1:]:
            _REDUCE[op](total, v, out=total)
        self._memory(recvbuf, count, datatype)[...] = total

    def bcast(self, buff: int, count: int, datatype: int, root: int, stream: int) -> None:
        mine = self._memory(buff, count, datatype)
        values = self._group.exchange(self._rank, mine.copy())
        mine[...] = values[root]

    def destroy(self) -> None:
        return None
