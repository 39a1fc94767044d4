"""MaxPool2D, AvgPool2D and GlobalAvgPool2D on (N, C, H, W)."""
from __future__ import annotations

from typing import Any

from ..backend import Array
from ..ops.pooling import (avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward,
                           max_pool2d_forward, pooled_size)
from .base import Layer, is_grad_enabled
from .conv import positive_int_tuple


class _Pool2D(Layer):
    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = positive_int_tuple(kernel_size, 2, "kernel_size", name)
        self.stride = positive_int_tuple(self.kernel_size if stride is None else stride, 2,
                                         "stride", name)
        self.padding = positive_int_tuple(padding, 2, "padding", name, minimum=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding {self.padding} must be at most half of "
                             f"kernel_size {self.kernel_size}")
        self._cache = None

    def config(self) -> dict:
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding)}

    @property
    def _pad4(self) -> tuple[int, int, int, int]:
        ph, pw = self.padding
        return (ph, ph, pw, pw)

    def _check(self, x: Array) -> None:
        self._check_input(x, 4, None, "(N, C, H, W)")
        oh, ow = pooled_size(x.shape, self.kernel_size, self.stride, self._pad4)
        if oh < 1 or ow < 1:
            raise ValueError(f"{self!r}: input of spatial size {tuple(x.shape[2:])} is smaller "
                             f"than the pooling window {self.kernel_size}")

    def _check_dy(self, dy: Array) -> None:
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward() called before forward() (or after a "
                               f"forward under gpuconv.no_grad(), which keeps nothing)")
        expected = self._cache[-1]
        if tuple(dy.shape) != tuple(expected):
            raise ValueError(f"{self!r}: backward expected dy of shape {tuple(expected)}, "
                             f"got {tuple(dy.shape)}")


class MaxPool2D(_Pool2D):
    """Max over KH x KW windows (padding counts as -inf); x (N, C, H, W) -> (N, C, OH, OW).

    ``stride`` defaults to ``kernel_size``. Ties go to the first maximum in the
    window, as in PyTorch.
    """

    def forward(self, x: Array) -> Array:
        self._check(x)
        keep = is_grad_enabled()
        y, argmax = max_pool2d_forward(x, self.kernel_size, self.stride, self._pad4,
                                       need_argmax=keep)
        self._cache = (argmax, x.shape, y.shape) if keep else None
        return y

    def backward(self, dy: Array) -> Array:
        self._check_dy(dy)
        argmax, x_shape, _ = self._cache
        return max_pool2d_backward(dy, argmax, x_shape, self.kernel_size, self.stride, self._pad4)


class AvgPool2D(_Pool2D):
    """Mean over KH x KW windows; zero padding counts in the divisor (PyTorch default)."""

    def forward(self, x: Array) -> Array:
        self._check(x)
        y = avg_pool2d_forward(x, self.kernel_size, self.stride, self._pad4)
        self._cache = (x.shape, y.shape)
        return y

    def backward(self, dy: Array) -> Array:
        self._check_dy(dy)
        return avg_pool2d_backward(dy, self._cache[0], self.kernel_size, self.stride, self._pad4)


class GlobalAvgPool2D(Layer):
    """Mean over H and W: x (N, C, H, W) -> (N, C)."""

    def __init__(self) -> None:
        super().__init__()
        self._cache = None

    def forward(self, x: Array) -> Array:
        self._check_input(x, 4, None, "(N, C, H, W)")
        self._cache = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, dy: Array) -> Array:
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        n, c, h, w = self._cache
        if tuple(dy.shape) != (n, c):
            raise ValueError(f"{self!r}: backward expected dy of shape {(n, c)}, got {tuple(dy.shape)}")
        scaled = dy * (1.0 / (h * w))
        return scaled[:, :, None, None].repeat(h, axis=2).repeat(w, axis=3)
