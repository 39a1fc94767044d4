"""One BLAS thread per rank on the CPU, set after NumPy has loaded its BLAS.

Under ``mpiexec -n N`` every rank is a full NumPy process; with OpenBLAS's
default (one thread per core) N ranks on N cores would run N*N threads and
thrash. The thread variables (``OMP_NUM_THREADS`` ...) are read only when the
BLAS library is loaded, i.e. when NumPy is imported -- before gpuconv can act
-- so :func:`limit_blas_threads` (from :mod:`gpuconv.backend.threads`) calls the
library's own setter through ctypes instead (what threadpoolctl does), for each
OpenBLAS NumPy has loaded. The ``--nproc`` launcher also sets
``OMP_NUM_THREADS=1`` in its children's environment, which covers every BLAS.
Linux only (reads /proc/self/maps); elsewhere it does nothing and the variables
are the way.
"""
from __future__ import annotations

from ..backend.threads import limit_blas_threads, loaded_openblas

__all__ = ["limit_blas_threads", "loaded_openblas"]
