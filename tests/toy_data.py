"""Tiny synthetic datasets shared by the training tests."""
from __future__ import annotations

import numpy


def blob_images(n: int = 96, seed: int = 0, dtype=numpy.float32):
    """(n, 1, 8, 8) images whose class (0/1/2) is where a bright 3x3 blob sits."""
    rng = numpy.random.default_rng(seed)
    x = rng.normal(0.0, 0.3, size=(n, 1, 8, 8))
    y = rng.integers(0, 3, size=n)
    for i, c in enumerate(y):
        r, col = [(0, 0), (0, 5), (5, 2)][c]
        x[i, 0, r:r + 3, col:col + 3] += 1.5
    return x.astype(dtype), y.astype(numpy.int64)
