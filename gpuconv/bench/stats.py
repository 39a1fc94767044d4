"""Summary statistics of repeated timings and FLOP counts of the benchmarked layers."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

__all__ = ["Stats", "summarize", "conv2d_flops", "conv2d_output_size", "gflops_per_s"]


@dataclass(frozen=True)
class Stats:
    """Median and range of repeated measurements (seconds, or any unit)."""

    median: float
    min: float
    max: float
    mean: float
    n: int

    def scaled(self, factor: float) -> "Stats":
        """The same statistics multiplied by ``factor`` (e.g. 1e3 for seconds -> ms)."""
        return Stats(self.median * factor, self.min * factor, self.max * factor,
                     self.mean * factor, self.n)

    def rate(self, work: float) -> "Stats":
        """``work / value`` statistics (a throughput from times): the median maps to the
        median, and min/max swap (the fastest time is the highest rate)."""
        return Stats(work / self.median, work / self.max, work / self.min,
                     work / self.mean, self.n)


def summarize(values: Sequence[float]) -> Stats:
    """Median, min, max and mean of ``values`` (at least one, all finite and > 0 for rates)."""
    if len(values) == 0:
        raise ValueError("summarize: no values")
    vals = [float(v) for v in values]
    return Stats(statistics.median(vals), min(vals), max(vals), statistics.fmean(vals), len(vals))


def conv2d_output_size(size: int, kernel: int, stride: int, padding: int,
                       dilation: int = 1) -> int:
    """Output length of a convolution along one axis (symmetric padding, floor mode)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv2d_flops(batch: int, in_channels: int, out_channels: int, kernel: tuple[int, int],
                 out_hw: tuple[int, int], backward: bool = False) -> int:
    """Floating-point operations of a 2-D convolution, counting a multiply-add as 2.

    Forward: ``2 * N * OH * OW * O * C * KH * KW`` (bias ignored). With
    ``backward=True`` the forward plus both backward GEMMs (input and weight
    gradient, each as large as the forward): 3x the forward count.
    """
    kh, kw = kernel
    oh, ow = out_hw
    forward = 2 * batch * oh * ow * out_channels * in_channels * kh * kw
    return 3 * forward if backward else forward


def gflops_per_s(flops: float, seconds: float) -> float:
    """Achieved GFLOP/s for ``flops`` operations in ``seconds``."""
    return flops / seconds / 1e9
