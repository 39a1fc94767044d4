"""Download an archive, check its MD5 and unpack it atomically and safely."""
from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from .base import DownloadError

__all__ = ["md5sum", "download_file", "safe_extract", "download_and_extract"]

_CHUNK = 1 << 20


def md5sum(path: "str | os.PathLike[str]") -> str:
    """Hex MD5 of a file (read in 1 MiB chunks)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download_file(url: str, dest: Path, md5: "str | None", *, timeout: float = 60.0,
                  progress: "Callable[[int, int | None], None] | None" = None) -> Path:
    """Fetch ``url`` into ``dest``: written as ``dest.part`` and renamed once the
    MD5 matches, so ``dest`` is either absent or complete.

    Raises :class:`DownloadError` (with ``url``/``dest`` in the message) on any
    network error or checksum mismatch; the partial file is removed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            total = resp.headers.get("Content-Length") if getattr(resp, "headers", None) else None
            total = int(total) if total and total.isdigit() else None
            done = 0
            while True:
                block = resp.read(_CHUNK)
                if not block:
                    break
                out.write(block)
                h.update(block)
                done += len(block)
                if progress is not None:
                    progress(done, total)
        if total is not None and done != total:
            raise DownloadError(f"download of {url} stopped after {done} of {total} bytes")
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        # HTTPException: e.g. IncompleteRead when a chunked response stops mid-chunk
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"could not download {url}: {reason}") from exc
    digest = h.hexdigest()
    if md5 is not None and digest != md5.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(f"checksum mismatch for {url}: MD5 {digest}, expected {md5}; "
                            "the download is corrupt or not the official file")
    os.replace(part, dest)
    return dest


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    norm = posixpath.normpath(name)
    if name.startswith(("/", "\\")) or os.path.isabs(name) or norm == ".." or \
            norm.startswith("../") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise DownloadError(f"{archive}: refusing to extract member {name!r} "
                            "(absolute path or path outside the target folder)")
    if not (member.isfile() or member.isdir()):
        raise DownloadError(f"{archive}: refusing to extract member {name!r} "
                            "(links and special files are not allowed)")


def safe_extract(archive: "str | os.PathLike[str]", dest: "str | os.PathLike[str]") -> None:
    """Extract a (possibly compressed) tar archive into ``dest``.

    Only regular files and folders with relative paths inside ``dest`` are
    accepted; any absolute path, ``..`` component, link or device raises
    :class:`DownloadError` before anything is written.
    """
    archive = Path(archive)
    dest = Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            root = dest.resolve()
            for member in members:
                target = (dest / member.name).resolve()
                if target != root and root not in target.parents:
                    raise DownloadError(f"{archive}: refusing to extract member "
                                        f"{member.name!r} (outside the target folder)")
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=members, **kwargs)
    except DownloadError:
        raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DownloadError(f"{archive}: not a readable tar archive, it is truncated or "
                            f"corrupt ({type(exc).__name__}: {exc}); delete it") from exc


def download_and_extract(url: str, md5: "str | None", root: Path, archive_name: str,
                         folders: "list[str]") -> str:
    """Make one of ``folders`` (e.g. ``cifar-10-batches-py``) exist under ``root``.

    The archive is kept as ``root/archive_name`` (reused when its MD5 matches),
    unpacked into a temporary folder inside ``root`` and the folder it holds is
    moved into place with ``os.replace``, so ``root/<folder>`` appears complete
    or not at all. Returns the name of the folder that was installed.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / archive_name
    if not (archive.is_file() and (md5 is None or md5sum(archive) == md5.lower())):
        print(f"gpuconv: downloading {url} to {archive}", file=sys.stderr)
        download_file(url, archive, md5)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        safe_extract(archive, tmp)
        for folder in folders:
            src = tmp / folder
            if src.is_dir():
                dst = root / folder
                try:
                    os.replace(src, dst)
                except OSError:
                    if not dst.is_dir():  # not a lost race with another process
                        raise
                return folder
        raise DownloadError(f"{archive} (from {url}) holds none of the expected folders "
                            f"{folders}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
