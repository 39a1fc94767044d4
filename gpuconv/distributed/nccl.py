"""NCCL between GPUs (``cupy.cuda.nccl``), set up over MPI as ChainerMN's ``pure_nccl``.

Rank 0 creates NCCL's unique id, MPI broadcasts it, and every rank builds
``NcclCommunicator(size, id, rank)`` *inside its GPU's context* (NCCL binds a
communicator to the current device). Collectives are queued on the current
CUDA stream of that device, so they order after the backward kernels with no
host synchronisation. Objects, barriers and aborts go through MPI.

The ``nccl`` module is ``cupy.cuda.nccl`` (a submodule CuPy does not import by
itself) unless one is passed in (the tests pass a stand-in that works on the
strict fake CuPy).
"""
from __future__ import annotations

import importlib
from typing import Any, Sequence

import numpy

from ..backend import Array, Device
from .comm import Communicator

__all__ = ["NCCLCommunicator", "NCCL_DTYPES", "nccl_module", "nccl_available"]

#: numpy dtype name -> the name of NCCL's datatype constant in ``cupy.cuda.nccl``.
NCCL_DTYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32",
               "float64": "NCCL_FLOAT64", "int32": "NCCL_INT32", "int64": "NCCL_INT64",
               "uint8": "NCCL_UINT8", "int8": "NCCL_INT8"}


def nccl_module() -> Any:
    """``cupy.cuda.nccl``; RuntimeError naming the fix when NCCL cannot be loaded."""
    try:
        module = importlib.import_module("cupy.cuda.nccl")
    except ImportError as exc:
        raise RuntimeError(f"NCCL backend: cupy.cuda.nccl cannot be imported ({exc})") from None
    if not getattr(module, "available", False):
        raise RuntimeError("NCCL backend: CuPy cannot load libnccl; pip install "
                           "nvidia-nccl-cu12, or use backend='mpi'")
    return module


def nccl_available() -> bool:
    """True when CuPy's NCCL bindings load (never raises)."""
    try:
        nccl_module()
    except Exception:
        return False
    return True


class NCCLCommunicator(Communicator):
    """Allreduce and broadcast of CuPy arrays on ``device`` with NCCL.

    ``mpi``: the job's :class:`~gpuconv.distributed.comm.MPICommunicator`
    (rank, size, local rank, objects, abort). Arrays must live on ``device``;
    non-contiguous ones go through a contiguous copy.
    """

    backend = "nccl"

    def __init__(self, mpi: Communicator, device: Device, nccl: Any = None) -> None:
        super().__init__(device)
        self.mpi = mpi
        self.rank, self.size = mpi.rank, mpi.size
        self.local_rank, self.local_size = mpi.local_rank, mpi.local_size
        self.xp = device.xp
        self.nccl = nccl_module() if nccl is None else nccl
        with device.context():
            uid = self.nccl.get_unique_id() if self.rank == 0 else None
            uid = mpi.broadcast_object(uid, root=0)
            self.comm = self.nccl.NcclCommunicator(self.size, uid, self.rank)

    def _dtype(self, a: Array) -> int:
        name = NCCL_DTYPES.get(numpy.dtype(a.dtype).name)
        if name is None:
            raise TypeError(f"NCCL: unsupported dtype {a.dtype}")
        return getattr(self.nccl, name)

    def _check(self, a: Array) -> None:
        if not isinstance(a, self.xp.ndarray):
            raise TypeError(f"NCCL collectives take arrays on {self.device}, got "
                            f"{type(a).__module__}.{type(a).__name__}")
        if a.device.id != self.device.index:
            raise TypeError(f"NCCL: array on GPU {a.device.id}, communicator on {self.device}")

    def _each(self, arrays: Sequence[Array], call) -> list[Array]:
        with self.device.context():
            stream = self.xp.cuda.get_current_stream().ptr
            for a in arrays:
                self._check(a)
                buf = a if a.flags.c_contiguous else self.xp.ascontiguousarray(a)
                call(buf, stream)
                if buf is not a:
                    a[...] = buf
        return list(arrays)

    def allreduce_sum(self, arrays: Sequence[Array]) -> list[Array]:
        op = self.nccl.NCCL_SUM
        return self._each(arrays, lambda b, s: self.comm.allReduce(
            b.data.ptr, b.data.ptr, b.size, self._dtype(b), op, s))

    def broadcast(self, arrays: Sequence[Array], root: int = 0) -> list[Array]:
        return self._each(arrays, lambda b, s: self.comm.bcast(
            b.data.ptr, b.size, self._dtype(b), root, s))

    def barrier(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()
        self.mpi.barrier()

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.mpi.broadcast_object(obj, root)

    def allgather_object(self, obj: Any) -> list[Any]:
        return self.mpi.allgather_object(obj)

    def abort(self, code: int = 1) -> None:
        self.mpi.abort(code)
