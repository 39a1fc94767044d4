"""Communicators: what data-parallel training needs from a distributed engine.

Every communicator has ``rank``, ``size``, ``local_rank`` (rank among the
processes on this host), ``backend`` (``"single"``, ``"mpi"`` or ``"nccl"``)
and ``device`` (the device this rank should compute on), and offers:

- ``allreduce_sum(arrays)`` / ``allreduce_mean(arrays)``: element-wise sum /
  mean over all ranks of each array (any shape; float or int dtypes),
  **in place** for C-contiguous arrays; returns the list of results.
- ``broadcast(arrays, root=0)``: overwrite each array with ``root``'s, in place.
- ``barrier()``.
- ``broadcast_object(obj, root)``, ``allgather_object(obj)``: small picklable
  host objects (settings, checkpoints, checksums).
- ``abort(code)``: end the whole job now (every rank), with exit code ``code``.

:class:`SingleProcess` (size 1) does nothing and is what ``init()`` returns
without an MPI launcher. :class:`MPICommunicator` runs over mpi4py with host
(NumPy) buffers; CuPy arrays are staged through host memory after a
synchronisation of the current stream (plain MPI libraries are not
CUDA-aware, and MPI must not read a buffer a kernel is still writing).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import numpy

from ..backend import Array, Device, device_context_of, get_array_module, get_device

__all__ = ["Communicator", "SingleProcess", "MPICommunicator"]


class Communicator:
    """Base class; see the module docstring for the contract."""

    backend = "single"
    rank = 0
    size = 1
    local_rank = 0
    local_size = 1

    def __init__(self, device: "Device | None" = None) -> None:
        self.device: Device = device if device is not None else get_device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that prints and writes files."""
        return self.rank == 0

    # -- collectives (size-1 defaults: nothing to do) -----------------------------------
    def allreduce_sum(self, arrays: Sequence[Array]) -> list[Array]:
        return list(arrays)

    def allreduce_mean(self, arrays: Sequence[Array]) -> list[Array]:
        """Mean over ranks of each array: the sum, then one in-place scaling by 1/size."""
        out = self.allreduce_sum(arrays)
        if self.size > 1:
            for a in out:  # float arrays; an integer sum has no in-place mean
                with device_context_of(a):
                    a *= 1.0 / self.size
        return out

    def broadcast(self, arrays: Sequence[Array], root: int = 0) -> list[Array]:
        return list(arrays)

    def barrier(self) -> None:
        return None

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allgather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def abort(self, code: int = 1) -> None:
        sys.exit(code)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(backend={self.backend!r}, rank={self.rank}, "
                f"size={self.size}, local_rank={self.local_rank}, device={self.device})")


class SingleProcess(Communicator):
    """The communicator of a process that runs alone (no MPI launcher): size 1, no-ops."""


def _host(a: Array) -> tuple[numpy.ndarray, bool]:
    """A C-contiguous host array with ``a``'s values, and whether it must be copied back."""
    if isinstance(a, numpy.ndarray):
        if a.flags.c_contiguous:
            return a, False
        return numpy.ascontiguousarray(a), True
    return _to_host_synchronised(a), True


def _to_host_synchronised(a: Array) -> numpy.ndarray:
    xp = get_array_module(a)
    # get() on the current stream waits for that stream only; a kernel queued on
    # another stream could still be writing, so wait for the device's work first.
    xp.cuda.get_current_stream().synchronize()
    return numpy.ascontiguousarray(xp.asnumpy(a))


def _copy_back(dst: Array, src: numpy.ndarray) -> None:
    if isinstance(dst, numpy.ndarray):
        dst[...] = src
    else:
        xp = get_array_module(dst)
        dst[...] = xp.asarray(src)


class MPICommunicator(Communicator):
    """Collectives over an ``mpi4py`` communicator (``MPI.COMM_WORLD`` by default).

    Host buffers go to MPI directly (no copy when C-contiguous); device
    buffers are staged through the host. ``local_rank`` comes from MPI's
    shared-memory split (``COMM_TYPE_SHARED``): ranks on one host.
    """

    backend = "mpi"

    def __init__(self, mpi_comm: Any = None, device: "Device | None" = None) -> None:
        from mpi4py import MPI  # noqa: PLC0415 - mpi4py is optional: only here, when asked

        super().__init__(device)
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()

    def allreduce_sum(self, arrays: Sequence[Array]) -> list[Array]:
        for a in arrays:
            buf, copy = _host(a)
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
            if copy:
                _copy_back(a, buf)
        return list(arrays)

    def broadcast(self, arrays: Sequence[Array], root: int = 0) -> list[Array]:
        for a in arrays:
            buf, copy = _host(a)
            self.comm.Bcast(buf, root=root)
            if copy:
                _copy_back(a, buf)
        return list(arrays)

    def barrier(self) -> None:
        self.comm.Barrier()

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def allgather_object(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(int(code) if code else 1)
        # MPICH's MPI_Abort can return to the caller while the launcher tears the job
        # down (seen with MPICH 5 when the abort code is not 1): never run on after it
        os._exit(int(code) if code else 1)
