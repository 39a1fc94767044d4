"""Keep freed host memory for reuse (glibc), so training steps stop page-faulting.

A NumPy training step allocates and frees the same few dozen arrays of up to
tens of MB every step. glibc hands blocks above 128 KiB straight back to the
kernel and maps them anew on the next allocation, so every step pays a page
fault per 4 KiB on first touch: measured here, a seed-CNN step at batch 128
spent about 17 % of its time on that. :func:`keep_freed_memory` raises
glibc's mmap threshold to its maximum (32 MiB), turns mmap off for the
blocks above it (``M_MMAP_MAX = 0``: they come from the heap too) and stops
heap trimming, so freed blocks of every size are reused. airbench at batch
1024 allocates arrays of 30-130 MiB every step (activations, their
gradients): with only the threshold raised they were still mapped anew each
step, and on a virtual machine whose freed memory goes back to the host a
re-touched page cost up to 10 ns per float32 (a width-0.5 step: 8.3 s ->
6.8 s with mmap off, GELU and max-pooling taking half the time).

It is process-wide and irreversible in effect (the process keeps its peak
heap), so gpuconv applies it only when training or benchmarking starts, and
never when ``GPUCONV_MALLOC_TUNING=0`` is set. Elsewhere than glibc it does
nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems
_applied = False


def keep_freed_memory() -> bool:
    """Apply the tuning once per process; True if it is in effect."""
    global _applied
    if _applied:
        return True
    if os.environ.get("GPUCONV_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and ok  # glibc still maps when the heap cannot grow
    ok = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    _applied = ok
    return ok
