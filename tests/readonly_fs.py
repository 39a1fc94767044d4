"""Run the gpuconv CLI as if one folder were on a read-only file system.

``python tests/readonly_fs.py PREFIX ARGS...`` runs ``gpuconv ARGS...`` with every
way of writing under PREFIX (creating folders, opening files for writing,
``os.open`` with write flags) failing with ``EROFS``, and ``os.access`` /
``os.statvfs`` reporting it read-only, as a read-only mount would. Tests run
as root (where ``chmod`` does not stop writes) still see the real error path.
"""
from __future__ import annotations

import builtins
import errno
import io
import os
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _install(prefix: str) -> None:
    prefix = os.path.abspath(prefix)

    def under(path) -> bool:
        try:
            p = os.path.abspath(os.fsdecode(path))
        except TypeError:  # a file descriptor
            return False
        return p == prefix or p.startswith(prefix + os.sep)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_mkdir, real_open, real_os_open = os.mkdir, builtins.open, os.open
    real_access, real_statvfs = os.access, os.statvfs

    def mkdir(path, *args, **kwargs):
        if under(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if under(file) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if under(path) and flags & _WRITE_FLAGS:
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def access(path, mode, *args, **kwargs):
        if under(path) and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    def statvfs(path):
        result = real_statvfs(path)
        if under(path):
            return os.statvfs_result(tuple(result[:8]) + (result.f_flag | os.ST_RDONLY,)
                                     + tuple(result[9:]))
        return result

    os.mkdir, builtins.open, io.open, os.open = mkdir, open_, open_, os_open
    os.access, os.statvfs = access, statvfs


if __name__ == "__main__":
    _install(sys.argv[1])
    from gpuconv.cli import main  # noqa: E402 - after the patches

    sys.exit(main(sys.argv[2:]))
