"""``--nproc N``: relaunch this command as N ranks under the installed ``mpiexec``.

The convenience form for one machine (like ``torchrun``): ``gpuconv train
--nproc 2 ...`` runs ``mpiexec -n 2 <this python> -m gpuconv train --nproc 2
...`` and returns its exit code. The children see the launcher's environment,
so they do not relaunch again; ``--nproc`` there only checks the world size.
Each child gets ``OMP_NUM_THREADS=1`` (and the OpenBLAS/MKL equivalents)
unless the user set a thread variable: N ranks on N cores want one BLAS
thread each.

``mpiexec`` is looked up next to the Python executable first (the ``mpich``
wheel installs it into the virtual environment's ``bin/``), then on PATH.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .env import THREAD_VARS, threads_set_by_user

__all__ = ["find_mpiexec", "relaunch_command", "child_environment", "relaunch"]

_SINGLE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
assert set(_SINGLE_THREAD) <= set(THREAD_VARS)


def find_mpiexec() -> str | None:
    """Path of ``mpiexec`` (or ``mpirun``): beside ``sys.executable``, else on PATH."""
    here = Path(sys.executable).parent
    for name in ("mpiexec", "mpirun"):
        candidate = here / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    for name in ("mpiexec", "mpirun"):
        found = shutil.which(name)
        if found:
            return found
    return None


def relaunch_command(mpiexec: str, nproc: int, argv: Sequence[str],
                     module: str = "gpuconv") -> list[str]:
    """``[mpiexec, -n, N, python, -m, gpuconv, *argv]`` (``argv`` without the program name;
    ``module``: another module to run, e.g. the benchmark's worker)."""
    return [mpiexec, "-n", str(int(nproc)), sys.executable, "-m", module, *argv]


def child_environment(environ: "dict[str, str] | None" = None) -> dict[str, str]:
    """The ranks' environment: one BLAS thread each unless a thread variable is set."""
    env = dict(os.environ if environ is None else environ)
    if not threads_set_by_user(env):
        env.update({name: "1" for name in _SINGLE_THREAD})
    return env


def relaunch(nproc: int, argv: Sequence[str], mpiexec: str) -> int:
    """Run ``argv`` as ``nproc`` ranks and wait; returns mpiexec's exit code.

    Ctrl-C reaches mpiexec and the ranks directly (same process group), and
    mpiexec forwards it, so the ranks can save their checkpoint: this process
    keeps waiting instead of killing mpiexec. SIGTERM is passed on to it.
    """
    proc = subprocess.Popen(relaunch_command(mpiexec, nproc, argv), env=child_environment())
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
