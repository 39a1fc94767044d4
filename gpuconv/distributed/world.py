"""``init()``: the communicator of this process, from the launcher that started it."""
from __future__ import annotations

import importlib.util
import os
from typing import Any

from ..backend import Device, get_device
from ..backend.threads import share_cpus
from .comm import Communicator, MPICommunicator, SingleProcess
from .env import launched_world_size, threads_set_by_user
from .faults import install_excepthook
from .nccl import NCCLCommunicator, nccl_available
from .threads import limit_blas_threads

__all__ = ["init", "launch_world", "BACKENDS", "MPI_MISSING", "mpi4py_installed", "rank_device"]

BACKENDS = ("auto", "mpi", "nccl")

#: What to install when mpi4py is missing (the ``mpi`` extra brings mpi4py and MPICH).
MPI_MISSING = ("several processes need mpi4py and an MPI library: pip install 'gpuconv[mpi]' "
               "(mpi4py + MPICH from the package index, no system packages), or "
               "pip install mpi4py against a system MPI (Open MPI, Intel MPI, MPICH)")

_world: Communicator | None = None   # what init() returned
_mpi: Communicator | None = None     # what launch_world() returned


def mpi4py_installed() -> bool:
    """True when mpi4py can be imported (checked without importing it)."""
    return importlib.util.find_spec("mpi4py") is not None


def _device_count(device: Device) -> int:
    try:
        return int(device.xp.cuda.runtime.getDeviceCount())
    except Exception:  # a backend without a CUDA runtime (the CPU, test fakes)
        return 1


def rank_device(spec: "str | Device | None", local_rank: int) -> Device:
    """The device of the rank with ``local_rank`` on its host: ``spec`` when it names
    an index (``cuda:1``) or the CPU; otherwise (``auto``, ``cuda``) GPU
    ``local_rank`` modulo the host's GPU count, one GPU per rank."""
    base = get_device(spec)
    text = spec if isinstance(spec, str) else os.environ.get("GPUCONV_DEVICE", "auto")
    explicit_index = isinstance(spec, Device) or (text is not None and ":" in str(text))
    if base.kind == "cpu" or explicit_index:
        return base
    return Device(base.kind, local_rank % _device_count(base))


def launch_world() -> Communicator:
    """The job's communicator before any device is chosen: a :class:`SingleProcess`
    without an MPI launcher (mpi4py not imported), else the MPI one (created
    once). Enough for settings checks, output on rank 0 and fault handling;
    :func:`init` builds on it."""
    global _mpi
    if _mpi is None:
        if launched_world_size() is None:
            _mpi = SingleProcess()
        else:
            if not mpi4py_installed():
                raise RuntimeError(f"this process was started by an MPI launcher but "
                                   f"{MPI_MISSING}")
            _mpi = MPICommunicator()
            if _mpi.size > 1:
                install_excepthook(_mpi)
    return _mpi


def init(backend: str = "auto", device: "str | Device | None" = None) -> Communicator:
    """The communicator of this process (created on the first call, then reused).

    ``backend``: ``"mpi"`` (mpi4py; host buffers, device arrays staged through
    the host), ``"nccl"`` (``cupy.cuda.nccl`` between GPUs, its unique id
    broadcast over MPI) or ``"auto"`` (NCCL when this rank's device is a CUDA
    GPU and NCCL is available, else MPI). ``device``: the device spec to train
    on (default ``$GPUCONV_DEVICE`` / auto); with several ranks per host an
    unindexed GPU spec means GPU ``local_rank``. The chosen device is
    ``comm.device``.

    Without an MPI launcher (``mpiexec``) this returns a size-1
    :class:`SingleProcess` and never imports mpi4py. Under a launcher with
    several ranks it also makes an uncaught exception abort the whole job
    (:mod:`gpuconv.distributed.faults`) and, on the CPU, limits BLAS to one
    thread per rank unless a thread variable (``OMP_NUM_THREADS`` ...) is set.
    """
    global _world
    if backend not in BACKENDS:
        raise ValueError(f"distributed.init: backend must be one of {BACKENDS}, got {backend!r}")
    if _world is not None:
        return _world
    base = launch_world()
    if base.size == 1:
        base.device = get_device(device)
        _world = base
        return base
    rank_dev = rank_device(device, base.local_rank)
    base.device = rank_dev
    if backend == "nccl" and rank_dev.kind == "cpu":
        raise ValueError("distributed.init: backend 'nccl' needs a CUDA device; this rank's "
                         "device is the CPU (use backend='mpi')")
    comm: Communicator = base
    if backend == "nccl" or (backend == "auto" and rank_dev.kind == "cuda"
                             and nccl_available()):
        comm = NCCLCommunicator(base, rank_dev)
    if rank_dev.kind == "cpu" and not threads_set_by_user():
        limit_blas_threads(1)
    if rank_dev.kind == "cpu":  # the host's cores are shared by its ranks' worker threads
        share_cpus(max(1, base.local_size))
    _world = comm
    return comm


def _reset_for_tests() -> None:
    global _world, _mpi
    _world = _mpi = None


def world() -> Any:
    """The communicator made by :func:`init`, or None before it."""
    return _world
