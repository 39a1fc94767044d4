"""Is this process one rank of an MPI job? Read from the launcher's environment only.

No import of mpi4py happens here: plain ``gpuconv train`` and ``--nproc 1``
must work (and stay fast) where mpi4py is not installed. Every common
launcher exports the world size: MPICH/Hydra and Intel MPI ``PMI_SIZE``,
Open MPI ``OMPI_COMM_WORLD_SIZE``, PMIx launchers ``PMIX_RANK`` (with a size
found by MPI itself), MVAPICH ``MV2_COMM_WORLD_SIZE``.
"""
from __future__ import annotations

import os

__all__ = ["SIZE_VARS", "THREAD_VARS", "launched_world_size", "launched_by_mpi",
           "threads_set_by_user"]

#: Environment variables from which a launcher's world size is read, in order.
SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
#: PMIx sets a rank but not always a size; its presence alone means "under MPI".
_RANK_ONLY_VARS = ("PMIX_RANK",)
#: Variables that fix the number of BLAS/OpenMP threads; if the user set one we keep it.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def launched_world_size() -> int | None:
    """The world size the MPI launcher announced, 0 if it announced only a rank,
    None when no launcher started this process."""
    for name in SIZE_VARS:
        value = os.environ.get(name)
        if value:
            try:
                return int(value)
            except ValueError:
                return 0
    if any(os.environ.get(name) for name in _RANK_ONLY_VARS):
        return 0
    return None


def launched_by_mpi() -> bool:
    """True when an MPI launcher (mpiexec, mpirun, srun with PMI) started this process."""
    return launched_world_size() is not None


def threads_set_by_user(environ: "dict[str, str] | None" = None) -> bool:
    """True when one of :data:`THREAD_VARS` is set (the user chose a thread count)."""
    env = os.environ if environ is None else environ
    return any(env.get(name) for name in THREAD_VARS)
