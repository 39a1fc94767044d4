"""Atomic file writes: the one helper every file gpuconv writes goes through.

:func:`atomic_write` writes through a temporary file in the destination's
directory and moves it over the destination with ``os.replace``, so a reader
(or a crash) sees either the old file or the complete new one, never a
partial write. Behaviour, the same for every caller:

* the parent directory is created if missing;
* the temporary file is flushed and fsync'ed before the rename;
* the new file's permissions are ``0o666 & ~umask`` (``mkstemp`` creates
  0600 files; a plain ``open`` would honour the umask, so this does too);
* the directory is fsync'ed after the rename, best effort (so the rename
  itself is durable where the OS allows it);
* on any error (including KeyboardInterrupt) the temporary file is removed
  and the destination is left untouched; an OSError then names the
  destination (a write to a full disk raises one that names no file).
"""
from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_text"]


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_directory(directory: str) -> None:
    """fsync a directory so a rename in it is durable; silently skipped where impossible."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_write(path: "str | os.PathLike", write: Callable[[BinaryIO], None]) -> None:
    """Create or replace ``path`` atomically with what ``write(f)`` writes to ``f``.

    ``write`` receives a binary file object opened on a temporary file
    (``.<name>.<random>.tmp``) in the same directory as ``path``; when it
    returns, the file is flushed, fsync'ed, given permissions
    ``0o666 & ~umask`` and renamed over ``path``. ``path`` is used exactly as
    given. If ``write`` (or any later step) raises, the temporary file is
    deleted, ``path`` keeps its previous content and the exception propagates.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                                   dir=directory)
    except OSError as exc:
        _name_destination(exc, path)
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            _name_destination(exc, path)
        raise
    _fsync_directory(directory)


def _name_destination(exc: OSError, path: str) -> None:
    """Make an OSError of :func:`atomic_write` name ``path``: a failed write (a full
    disk: ENOSPC) carries no file name, and one about the temporary file would name
    a file the caller never asked for."""
    name = None if exc.filename is None else os.fsdecode(exc.filename)
    if name is None or os.path.basename(name).startswith("." + os.path.basename(path) + "."):
        exc.filename, exc.filename2 = path, None


def atomic_write_text(path: "str | os.PathLike", text: str) -> None:
    """Create or replace ``path`` atomically with ``text`` as UTF-8.

    Newlines are written as given (no platform translation). See
    :func:`atomic_write` for the guarantees.
    """
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))
