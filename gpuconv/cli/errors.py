"""User errors of the command line: what they are and how they are printed.

An error caused by the user's input, files or environment (a bad flag value,
a damaged dataset or model file, a read-only output folder, a device that is
not there) ends the command with one message on stderr that names the
culprit, and exit code 2, without a traceback. Everything else is a bug in
gpuconv and keeps its traceback. ``--debug`` or ``GPUCONV_DEBUG=1`` prints the
traceback of user errors too.

Commands raise :class:`CLIError` with their own wording where they know which
flag or file is at fault; :func:`user_error_message` also recognises the
library's own user-error types (damaged datasets, refused pickles, file
system errors) that reach :func:`gpuconv.cli.main` unconverted.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pickle
import traceback
import warnings
from pathlib import Path
from typing import Iterator

from ..data.datasets import CorruptDatasetError, DatasetNotFoundError

__all__ = ["CLIError", "user_error_message", "debug_enabled", "print_traceback",
           "writing_to", "one_line", "without_path", "check_writable_folder",
           "ENVIRONMENT_ERRNOS", "no_float_warnings"]

#: OSError numbers that describe the user's environment, not a bug: a read-only
#: or full file system, missing permissions, a path that is a file or a folder
#: where the other was expected, a failing disk. (A missing file is not among
#: them: the commands check the files they are given, so an unconverted
#: FileNotFoundError is a bug and keeps its traceback.)
ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "EROFS", "EACCES", "EPERM", "ENOSPC", "EDQUOT", "ENOTDIR", "EISDIR", "ENAMETOOLONG",
        "EFBIG", "EIO")
    if hasattr(errno, name))


#: NumPy's floating-point RuntimeWarnings ("overflow encountered in matmul",
#: "invalid value encountered in ..."); see :func:`no_float_warnings`.
FLOAT_WARNINGS = r"(overflow|invalid value|divide by zero|underflow) encountered"


@contextlib.contextmanager
def no_float_warnings() -> Iterator[None]:
    """Silence NumPy's floating-point RuntimeWarnings for the duration of a command.

    A diverging training run overflows in matmuls before its loss turns NaN;
    gpuconv detects the non-finite loss and says what to change, so NumPy's
    warnings (a line of source each, from the worker threads too) would only
    bury that message. A warnings filter rather than NumPy's floating-point error
    state: the filter holds in every thread of the process (the error state is per
    thread), and works the same whatever the array library (CuPy emits none of these).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=FLOAT_WARNINGS, category=RuntimeWarning)
        yield


class CLIError(Exception):
    """A user-facing error: printed as one message (no traceback), exit code ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def one_line(text: str) -> str:
    """``text`` with its lines joined by spaces (library messages may span lines)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def without_path(detail: str, path: "str | os.PathLike") -> str:
    """``detail`` without a leading ``"<path>: "`` (the library names the file in its
    messages; the command's own message names it already)."""
    prefix = f"{os.fspath(path)}: "
    return detail[len(prefix):] if detail.startswith(prefix) else detail


def os_error_message(exc: OSError) -> str:
    """``"<file>: <reason>"`` for an OSError (both file names of a rename/link)."""
    reason = exc.strerror or str(exc)
    reason = reason[:1].lower() + reason[1:]  # "Read-only file system" -> "read-only ..."
    names = [os.fsdecode(n) for n in (exc.filename, exc.filename2) if n is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message for an exception caused by the user, or None for a bug.

    User errors: :class:`CLIError`; the library's dataset errors
    (``DatasetNotFoundError``, ``CorruptDatasetError``) and refused or
    unreadable pickles; OSErrors about a named file whose errno describes the
    environment (:data:`ENVIRONMENT_ERRNOS`). Anything else returns None.
    """
    if isinstance(exc, CLIError):
        return str(exc)
    if isinstance(exc, (CorruptDatasetError, DatasetNotFoundError, pickle.UnpicklingError)):
        return one_line(str(exc))
    if isinstance(exc, OSError) and exc.filename is not None \
            and exc.errno in ENVIRONMENT_ERRNOS:
        return os_error_message(exc)
    return None


def debug_enabled(flag: bool = False) -> bool:
    """``--debug`` given, or ``GPUCONV_DEBUG`` set to something other than '' / '0'."""
    return bool(flag) or os.environ.get("GPUCONV_DEBUG", "").strip() not in ("", "0")


def print_traceback(exc: BaseException) -> None:
    """Print ``exc``'s traceback to stderr, including the exception a CLIError was
    raised from (``raise CLIError(...) from None`` hides it otherwise)."""
    if exc.__cause__ is None and exc.__context__ is not None:
        exc.__suppress_context__ = False
    traceback.print_exception(type(exc), exc, exc.__traceback__)


def _related(a: "str | os.PathLike", b: Path) -> bool:
    """True when path ``a`` is ``b``, inside ``b`` or one of ``b``'s ancestors."""
    pa, pb = Path(os.path.abspath(os.fsdecode(a))), Path(os.path.abspath(b))
    return pa == pb or pb in pa.parents or pa in pb.parents


@contextlib.contextmanager
def writing_to(folder: "str | os.PathLike", flag: str) -> Iterator[None]:
    """Turn an OSError about ``folder`` (or a file in it, or a parent that could not
    be created) into a CLIError naming ``flag``; other errors pass through."""
    folder = Path(folder)
    try:
        yield
    except OSError as exc:
        names = [n for n in (exc.filename, exc.filename2) if n is not None]
        if not any(_related(n, folder) for n in names):
            raise
        full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        advice = ("free some space there or choose another folder" if full
                  else "choose a folder you can write to")
        raise CLIError(f"{flag} {folder}: cannot write there ({os_error_message(exc)}); "
                       f"{advice}") from exc


def check_writable_folder(folder: "str | os.PathLike", flag: str) -> None:
    """Refuse early (before any work) an output folder that cannot be created or
    written: a path through a file, or a read-only/permission-denied ancestor.
    Creates nothing."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise CLIError(f"{flag} {folder}: {probe} is a file, not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        read_only = False
        with contextlib.suppress(OSError):
            read_only = bool(os.statvfs(probe).f_flag & getattr(os, "ST_RDONLY", 1))
        why = "is on a read-only file system" if read_only else "is not writable"
        raise CLIError(f"{flag} {folder}: cannot write there ({probe} {why}); choose a "
                       "folder you can write to")
