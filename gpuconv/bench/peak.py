"""The machine's measured float32 GEMM peak, the yardstick of the conv rows' "% of peak"."""
from __future__ import annotations

from types import ModuleType

import numpy

from ..backend import to_device
from .stats import summarize
from .timing import Timer

__all__ = ["measure_sgemm_peak"]


def measure_sgemm_peak(xp: ModuleType, device: str, timer: Timer, size: int = 2048,
                       reps: int = 5, warmup: int = 2, dtype: str = "float32") -> dict:
    """GFLOP/s of ``xp.matmul`` on two ``size`` x ``size`` matrices (median, min, max).

    ``xp`` is numpy (device "cpu") or cupy (device "cuda", timed with CUDA
    events by the given timer). One product is ``2 * size**3`` operations.
    """
    if size < 1 or reps < 1:
        raise ValueError("measure_sgemm_peak: size and reps must be >= 1")
    rng = numpy.random.default_rng(0)
    a = to_device(rng.standard_normal((size, size)).astype(dtype), device)
    b = to_device(rng.standard_normal((size, size)).astype(dtype), device)
    out = xp.empty((size, size), dtype=dtype)

    def product() -> None:
        xp.matmul(a, b, out=out)

    for _ in range(warmup):
        timer.measure(product)
    seconds = summarize([timer.measure(product) for _ in range(reps)])
    gflops = seconds.rate(2.0 * size ** 3 / 1e9)
    return {"gflops": gflops.median, "gflops_min": gflops.min, "gflops_max": gflops.max,
            "size": size, "reps": reps, "dtype": dtype,
            "method": f"{xp.__name__}.matmul {size}x{size} {dtype}, {timer.kind}"}
