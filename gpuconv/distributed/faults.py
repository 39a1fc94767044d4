"""A failing rank ends the whole job, loudly and once, instead of hanging it.

In MPI a rank that leaves (exception, ``sys.exit``) while the others wait in
a collective hangs them forever: mpi4py finalises MPI at exit, which waits
for ranks that never come. So on a rank's error we print it and call
``MPI_Abort``, which makes the launcher kill every rank and exit non-zero.

A rank that is *killed* (``kill -9``, the kernel's OOM killer) cannot run
anything; there the launcher does the same by itself (MPICH's Hydra and
Open MPI both end the job when one process dies abnormally; measured here:
under a second).

"Printed once": when every rank fails the same way (a bad setting, missing
data), rank 0 prints and aborts at once while the other ranks wait
``quiet_s`` seconds before printing, by which time the abort has usually
ended them; a rank failing alone prints after that delay.
"""
from __future__ import annotations

import contextlib
import sys
import time
import traceback
from typing import Callable, Iterator

from .comm import Communicator

__all__ = ["abort_on_error", "install_excepthook", "describe_error"]

_QUIET_S = 3.0  # long enough for the launcher to end the job on a loaded machine


def describe_error(exc: BaseException) -> str:
    """One error as the job prints it: the traceback, unless the error is a user
    error carrying an exit ``code`` (gpuconv's CLIError), then its message only."""
    if hasattr(exc, "code") and not isinstance(exc, SystemExit):
        return f"{type(exc).__name__}: {exc}"
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()


def _fail(comm: Communicator, message: str, code: int, quiet_s: float) -> None:
    if comm.rank != 0:
        time.sleep(quiet_s)
    print(f"gpuconv: rank {comm.rank} of {comm.size} failed: {message}", file=sys.stderr,
          flush=True)
    comm.abort(code)


@contextlib.contextmanager
def abort_on_error(comm: Communicator, exit_code: Callable[[BaseException], int] = lambda e: 1,
                   message: Callable[[BaseException], str] = describe_error,
                   quiet_s: float = _QUIET_S) -> Iterator[None]:
    """Run the block; if it raises on a rank of a multi-rank job, print the error
    with the rank and abort the job with ``exit_code(error)``. A no-op for size 1."""
    if comm.size == 1:
        yield
        return
    try:
        yield
    except SystemExit as exc:
        if exc.code not in (0, None):
            _fail(comm, f"exit {exc.code}", int(exc.code) if isinstance(exc.code, int) else 1,
                  quiet_s)
        raise
    except BaseException as exc:  # noqa: BLE001 - every error must end the job
        _fail(comm, message(exc), exit_code(exc), quiet_s)
        raise


def install_excepthook(comm: Communicator) -> None:
    """Make an uncaught exception on any rank abort the job (for scripts using the API)."""
    if comm.size == 1:
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        try:
            _fail(comm, describe_error(value), 130 if kind is KeyboardInterrupt else 1,
                  _QUIET_S)
        finally:
            previous(kind, value, tb)

    sys.excepthook = hook
