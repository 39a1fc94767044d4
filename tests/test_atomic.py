"""gpuconv.io.atomic: the one atomic-write helper behind every file gpuconv writes."""
from __future__ import annotations

import os
import stat

import pytest

from gpuconv.io.atomic import atomic_write, atomic_write_text


def test_writes_content_and_creates_parent(tmp_path):
    path = tmp_path / "sub" / "dir" / "out.bin"
    atomic_write(path, lambda f: f.write(b"\x00\x01binary"))
    assert path.read_bytes() == b"\x00\x01binary"
    atomic_write_text(str(path), "héllo\r\nworld\n")  # replaces; newlines kept as given
    assert path.read_bytes() == "héllo\r\nworld\n".encode("utf-8")
    assert os.listdir(path.parent) == ["out.bin"]


def test_error_leaves_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "keep.txt"
    atomic_write_text(path, "old\n")

    def failing(f):
        f.write(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(path, failing)
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["keep.txt"]

    with pytest.raises(KeyboardInterrupt):  # BaseException too
        atomic_write(tmp_path / "new.txt", lambda f: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert os.listdir(tmp_path) == ["keep.txt"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_permissions_honour_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = tmp_path / "perm.txt"
        atomic_write_text(path, "x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    finally:
        os.umask(old)
