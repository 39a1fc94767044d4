"""Build (once) and locate the real CIFAR-10 for integration tests.

``cifar10_root()`` returns a directory holding both official layouts,
``cifar-10-batches-py/`` and ``cifar-10-batches-bin/``, built by
``<repo root>/../shared/data/make_cifar10.py`` (about 20 s, needs Pillow).
The build goes to ``$GPUCONV_TEST_CACHE/cifar10`` (default
``~/.cache/gpuconv-test/cifar10``) and is reused by later runs. It is written
to a temporary directory first and renamed into place once complete, so an
interrupted build never leaves a half dataset behind; a lock file makes
concurrent test processes build it once and share it.

When ``../shared`` or Pillow is missing, or the build fails, the calling test
is skipped with the reason (``pytest.skip``).
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
MAKE_SCRIPT = SHARED_DATA / "make_cifar10.py"
COMPLETE_MARKER = ".complete"

_TRAIN = [f"data_batch_{k}" for k in range(1, 6)]
_PY_FILES = _TRAIN + ["test_batch", "batches.meta"]
_BIN_FILES = [n + ".bin" for n in _TRAIN] + ["test_batch.bin", "batches.meta.txt"]


def cache_dir() -> Path:
    """Where the built dataset lives (it may not exist yet)."""
    base = os.environ.get("GPUCONV_TEST_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "gpuconv-test")
    return Path(base) / "cifar10"


def _is_complete(root: Path) -> bool:
    if not (root / COMPLETE_MARKER).is_file():
        return False
    return all((root / "cifar-10-batches-py" / n).is_file() for n in _PY_FILES) and \
        all((root / "cifar-10-batches-bin" / n).is_file() for n in _BIN_FILES)


def _build(root: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".cifar10-build-", dir=root.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared
    try:
        proc = subprocess.run([sys.executable, str(MAKE_SCRIPT), str(tmp)],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"real CIFAR-10 unavailable: {MAKE_SCRIPT} failed "
                        f"(exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        (tmp / COMPLETE_MARKER).write_text("built by tests/cifar_cache.py\n")
        if root.exists() and not _is_complete(root):
            shutil.rmtree(root, ignore_errors=True)  # a stale, unmarked copy
        try:
            os.replace(tmp, root)
        except OSError:
            if not _is_complete(root):  # someone else won the race: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cifar10_root() -> str:
    """Return the root of a complete real CIFAR-10 (building it if needed),
    or skip the calling test with the reason."""
    root = cache_dir()
    if _is_complete(root):
        return str(root)
    if not MAKE_SCRIPT.is_file():
        pytest.skip(f"real CIFAR-10 unavailable: {MAKE_SCRIPT} does not exist "
                    "(the shared data folder is not next to the repository)")
    try:
        import PIL  # noqa: F401,PLC0415
    except ImportError:
        pytest.skip("real CIFAR-10 unavailable: building it needs Pillow (pip install pillow)")

    root.parent.mkdir(parents=True, exist_ok=True)
    # one builder at a time across processes; the others wait and reuse its result
    with open(root.parent / ".cifar10.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _is_complete(root):
                _build(root)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if not _is_complete(root):
        pytest.skip(f"real CIFAR-10 unavailable: build into {root} did not complete")
    return str(root)
