"""Data-parallel training on several processes: MPI (CPU and GPU) and NCCL (GPUs).

``comm = gpuconv.distributed.init()`` returns this process's communicator
(``rank``, ``size``, ``local_rank``, ``allreduce_mean``, ``broadcast``,
``barrier``); without an MPI launcher a size-1 one that does nothing. Pass it
to ``DataLoader(..., comm=comm)`` (each rank then yields its shard of every
*global* batch) and ``model.fit(..., comm=comm)`` (weights broadcast from
rank 0, gradients averaged in one allreduce per dtype, metrics reduced, only
rank 0 prints and writes checkpoints). ``sync_batchnorm(model, comm)`` makes
BatchNorm use global-batch statistics. Launch with ``mpiexec -n N`` or
``gpuconv train --nproc N``.

Modules: ``env`` (launcher detection, no mpi4py import), ``comm`` (the
communicator contract, size-1 and MPI), ``nccl``, ``world`` (``init``),
``sharding`` (the split rule), ``gradients`` (flat-buffer averaging),
``model_sync`` (broadcast, checksums), ``consistency`` (settings hash),
``faults`` (abort on a rank's error), ``threads`` (one BLAS thread per rank),
``syncbn`` (the converter), ``data_parallel`` (what fit uses), ``launch``
(``--nproc``).
"""
from .comm import Communicator, MPICommunicator, SingleProcess
from .consistency import SettingsMismatch, check_same, settings_hash, source_hash
from .data_parallel import DataParallel, reduce_epoch_stats
from .env import launched_by_mpi, launched_world_size
from .faults import abort_on_error, install_excepthook
from .gradients import GradientReducer
from .model_sync import ReplicaMismatch, broadcast_model, check_identical, model_checksum
from .nccl import NCCLCommunicator
from .sharding import shard_bounds
from .syncbn import bind_sync_batchnorm, sync_batchnorm
from .launch import find_mpiexec, relaunch
from .world import (BACKENDS, MPI_MISSING, init, launch_world, mpi4py_installed,
                    rank_device)

__all__ = [
    "init", "launch_world", "find_mpiexec", "relaunch", "Communicator", "SingleProcess",
    "MPICommunicator", "NCCLCommunicator",
    "BACKENDS", "MPI_MISSING", "mpi4py_installed", "rank_device", "launched_by_mpi",
    "launched_world_size", "shard_bounds", "GradientReducer", "broadcast_model",
    "check_identical", "model_checksum", "ReplicaMismatch", "check_same", "settings_hash",
    "source_hash", "SettingsMismatch", "abort_on_error", "install_excepthook",
    "sync_batchnorm", "bind_sync_batchnorm", "DataParallel", "reduce_epoch_stats",
]
