"""The command line's side of data parallelism (``gpuconv train --nproc N`` / ``mpiexec``).

Everything ``train`` does differently on several ranks is called from here,
so the training command itself changes by a few lines:

- :func:`add_arguments`: ``--nproc`` and ``--backend``;
- :func:`relaunch_wanted`: whether this process is about to relaunch (the
  command checks its settings first, so user errors stop before mpiexec);
- :func:`relaunch_if_asked`: ``--nproc N`` outside MPI relaunches under
  ``mpiexec`` (a clear error naming the ``mpi`` extra without mpi4py;
  ``--nproc 1`` and plain runs never import mpi4py);
- :func:`guarded`: runs the command so that an error on any rank, or a
  non-zero exit of one, ends the whole job with that rank's message once;
- :func:`check_settings`: the ranks' settings and gpuconv code must match.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from .. import distributed as dist
from . import argtypes
from .common import CLIError

__all__ = ["add_arguments", "relaunch_wanted", "relaunch_if_asked", "mpiexec_for", "guarded",
           "AgreedExit", "check_settings", "describe", "NOT_COMPARED"]

#: Settings that may legitimately differ between ranks (paths on different hosts).
NOT_COMPARED = ("data_dir", "download")


def add_arguments(group: Any) -> None:
    """Add ``--nproc`` and ``--backend`` to an argparse group."""
    group.add_argument("--nproc", type=argtypes.integer(1), default=None, metavar="N",
                       help="train with N processes on this machine (relaunches under "
                            "mpiexec; needs the 'mpi' extra). For several machines use "
                            "`mpiexec -n N -hosts a,b gpuconv train ...`")
    group.add_argument("--backend", choices=dist.BACKENDS, default="auto",
                       help="communication between processes: mpi, nccl (GPUs) or auto "
                            "(NCCL between CUDA devices when available, else MPI)")


def relaunch_wanted(args: argparse.Namespace) -> bool:
    """True when ``--nproc N`` (N > 1) asks this process, not yet under MPI, to relaunch."""
    nproc = getattr(args, "nproc", None)
    return bool(nproc and nproc > 1 and not dist.launched_by_mpi())


def relaunch_if_asked(args: argparse.Namespace) -> int | None:
    """mpiexec's exit code after relaunching for ``--nproc N`` (N > 1, not yet under
    MPI); None when this process should train itself."""
    nproc = getattr(args, "nproc", None)
    if nproc is not None and nproc < 1:
        raise CLIError(f"--nproc must be >= 1, got {nproc}")
    if not nproc or nproc == 1 or dist.launched_by_mpi():
        return None
    mpiexec = mpiexec_for(nproc)
    return dist.relaunch(nproc, list(getattr(args, "argv", ["gpuconv"]))[1:], mpiexec)


def mpiexec_for(nproc: int) -> str:
    """The ``mpiexec`` that starts ``--nproc N`` ranks; CLIError naming the ``mpi``
    extra when mpi4py is missing, or when no mpiexec is found."""
    if not dist.mpi4py_installed():
        raise CLIError(f"--nproc {nproc}: {dist.MPI_MISSING}")
    mpiexec = dist.find_mpiexec()
    if mpiexec is None:
        raise CLIError(f"--nproc {nproc}: no mpiexec found (beside {sys.executable} "
                       "or on PATH); pip install 'gpuconv[mpi]' brings MPICH's")
    return mpiexec


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return int(getattr(exc, "code", 1) or 1) if isinstance(exc, CLIError) else 1


def _message(command: str) -> Callable[[BaseException], str]:
    def message(exc: BaseException) -> str:
        if isinstance(exc, CLIError):
            return f"gpuconv {command}: error: {exc}"
        return dist.faults.describe_error(exc)
    return message


class AgreedExit(int):
    """An exit code every rank returns together (e.g. 130 after an interrupt all ranks
    agreed on and waited out): :func:`guarded` lets the ranks exit with it instead of
    aborting the job, so mpiexec ends with that code and no abort messages."""


def guarded(args: argparse.Namespace, command: str,
            body: Callable[[argparse.Namespace, Any], int]) -> int:
    """``body(args, world)`` on every rank. With several ranks: an error on one
    rank prints ``gpuconv: rank R of N failed: ...`` once and aborts the job with
    the command's exit code (2 for user errors); a rank returning non-zero
    alone aborts the others too, so none is left waiting (an :class:`AgreedExit`
    is every rank's code and ends the job normally)."""
    try:
        world = dist.launch_world()
    except RuntimeError as exc:
        raise CLIError(str(exc)) from None
    nproc = getattr(args, "nproc", None)
    if nproc and world.size > 1 and nproc != world.size:
        raise CLIError(f"--nproc {nproc} but the MPI launcher started {world.size} ranks; "
                       "give one of them only")
    with dist.abort_on_error(world, exit_code=_exit_code, message=_message(command)):
        result = body(args, world)
    rc = int(result or 0)
    if rc and world.size > 1 and not isinstance(result, AgreedExit):
        world.abort(rc)
    return rc


def check_settings(world: Any, settings: dict, out: Any) -> None:
    """CLIError on every rank unless all ranks run the same settings and code."""
    compared = {k: v for k, v in settings.items() if k not in NOT_COMPARED}
    try:
        dist.check_same(world, {**compared, "out": str(out), **dist.consistency.code_identity()},
                        "settings")
    except dist.SettingsMismatch as exc:
        raise CLIError(str(exc)) from None


def describe(comm: Any) -> dict:
    """What config.json records: ``{"world_size": N, "backend": "mpi" | "nccl" | "single"}``."""
    return {"world_size": int(comm.size), "backend": comm.backend}
