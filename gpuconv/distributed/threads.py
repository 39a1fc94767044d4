"""One BLAS thread per rank on the CPU, set after NumPy has loaded its BLAS.

Under ``mpiexec -n N`` every rank is a full NumPy process; with OpenBLAS's
default (one thread per core) N ranks on N cores would run N*N threads and
thrash. The thread variables (``OMP_NUM_THREADS`` ...) are read only when the
BLAS library is loaded, i.e. when NumPy is imported -- before gpuconv can act
-- so :func:`limit_blas_threads` calls the library's own setter through ctypes
instead (what threadpoolctl does), for each OpenBLAS NumPy has loaded. The
``--nproc`` launcher also sets ``OMP_NUM_THREADS=1`` in its children's
environment, which covers every BLAS. Linux only (reads /proc/self/maps);
elsewhere it does nothing and the variables are the way.
"""
from __future__ import annotations

import ctypes
import os

__all__ = ["limit_blas_threads", "loaded_openblas"]

# OpenBLAS exports its setter under its symbol prefix: NumPy's wheels bundle
# scipy-openblas with a "scipy_" prefix and a "64_" suffix for 64-bit ints.
_SETTERS = ("openblas_set_num_threads", "openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_")


def loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS shared libraries mapped into this process."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.isabs(p) and ".so" in p)


def limit_blas_threads(threads: int = 1) -> int:
    """Set every loaded OpenBLAS to ``threads`` threads; returns how many libraries
    took the setting (0 where none was found: MKL/Accelerate builds, non-Linux)."""
    done = 0
    for path in loaded_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(ctypes.c_int(int(threads)))
                done += 1
                break
    return done
