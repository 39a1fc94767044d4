"""Multiply: a fixed scalar factor (airbench's output scaling)."""
from __future__ import annotations

import math
import numbers

from ..backend import Array
from .base import Layer, describe


class Multiply(Layer):
    """``y = x * scale`` for a fixed Python float ``scale``; ``dx = dy * scale``.

    Any input shape ((N, C, H, W), (N, features), ...), float16/32/64; the output
    keeps x's shape and dtype (the scale is a Python float, so float16 stays
    float16). No parameters; airbench's head is ``Dense(256, 10, bias=False)``
    followed by ``Multiply(1 / 9)``.
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) \
                or not math.isfinite(scale):
            raise ValueError(f"Multiply: scale must be a finite real number, got {scale!r}")
        self.scale = float(scale)
        self._cache_shape: tuple[int, ...] | None = None

    def config(self) -> dict:
        return {"scale": self.scale}

    def forward(self, x: Array) -> Array:
        if not hasattr(x, "dtype") or x.dtype.kind != "f":
            raise TypeError(f"{self!r}: expected a floating-point array, got {describe(x)}")
        self._cache_shape = tuple(x.shape)
        return x * self.scale

    def backward(self, dy: Array) -> Array:
        if self._cache_shape is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        if tuple(dy.shape) != self._cache_shape:
            raise ValueError(f"{self!r}: backward expected dy of shape {self._cache_shape}, "
                             f"got {tuple(dy.shape)}")
        return dy * self.scale
