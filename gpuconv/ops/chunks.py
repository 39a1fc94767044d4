"""Batch chunks for the CPU: elementwise passes over a chunk of images stay in cache.

NumPy runs one pass over a whole array per call; a sequence of passes over a
(1024, 128, 15, 15) activation therefore streams it through memory each time.
Cut along the batch axis into chunks of about a MiB, the same passes read and
write the cache instead, and only the first and last touch memory. On other
backends (CuPy: one kernel per pass, the launch is what costs) one chunk is the
whole batch.
"""
from __future__ import annotations

from typing import Callable

import numpy

from ..backend import backend_of_module
from ..backend.threads import num_threads, parallel

CHUNK_ELEMENTS = 1 << 18  # elements per chunk (1 MiB of float32)


def chunks_batches(xp) -> bool:
    """Whether work on ``xp``'s arrays is cut into batch chunks: everywhere but CUDA."""
    return backend_of_module(xp).name != "cuda"


def batch_slices(shape: tuple[int, ...], xp, elements: int | None = None) -> list[slice]:
    """Slices of axis 0 of an array of ``shape``, each about ``elements`` (default
    :data:`CHUNK_ELEMENTS`) elements and at least one row (:func:`chunks_batches`);
    ``[slice(0, N)]`` on CUDA. An empty batch gives one empty slice."""
    n = shape[0] if shape else 0
    if not chunks_batches(xp) or n <= 1:
        return [slice(0, n)]
    per_row = max(1, int(numpy.prod(shape[1:])))
    step = max(1, (CHUNK_ELEMENTS if elements is None else elements) // per_row)
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def for_each_chunk(parts: list[slice], body: Callable[[slice], None], xp) -> None:
    """``body(part)`` for every chunk, on NumPy spread over :func:`parallel`'s workers
    (chunk ``i`` on worker ``i % workers``; bodies must write disjoint outputs), else in
    order. No BLAS inside (for that, see gpuconv.ops.conv's chunk driver)."""
    if len(parts) > 1 and backend_of_module(xp).name == "cpu":
        def work(k: int, workers: int) -> None:
            for part in parts[k::workers]:
                body(part)

        parallel(work, min(num_threads(), len(parts)))
    else:
        for part in parts:
            body(part)

