"""Inverted dropout: scale kept units by 1/(1-p) in training, identity in eval."""
from __future__ import annotations

import numbers

from ..backend import Array, generator, get_array_module
from .base import Layer, describe


class _DropoutBase(Layer):
    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
            raise ValueError(f"{type(self).__name__}: p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self._cache = None

    def config(self) -> dict:
        return {"p": self.p}

    def _mask_shape(self, x: Array) -> tuple[int, ...]:
        raise NotImplementedError

    def forward(self, x: Array) -> Array:
        if not self.training or self.p == 0.0:
            self._cache = "identity"
            return x
        xp = get_array_module(x)
        shape = self._mask_shape(x)
        if self.p == 1.0:
            mask = xp.zeros(shape, dtype=x.dtype)
        else:
            # one draw in the input's dtype (float32 for float16 inputs: the generators
            # of NumPy and CuPy draw only float32/float64); the scale folds into the mask
            draw = x.dtype if x.dtype.itemsize >= 4 else xp.float32
            keep = generator(xp).random(shape, dtype=draw) >= self.p
            mask = keep.astype(x.dtype) * (1.0 / (1.0 - self.p))
        self._cache = mask
        return x * mask

    def backward(self, dy: Array) -> Array:
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        if isinstance(self._cache, str):
            return dy
        return dy * self._cache


class Dropout(_DropoutBase):
    """Zeroes each element with probability ``p``; any input shape."""

    def _mask_shape(self, x: Array) -> tuple[int, ...]:
        return x.shape


class Dropout2d(_DropoutBase):
    """Zeroes whole channels of x (N, C, H, W) with probability ``p`` (one draw per (n, c))."""

    def _mask_shape(self, x: Array) -> tuple[int, ...]:
        if x.ndim != 4:
            raise ValueError(f"{self!r}: expected a 4-D input (N, C, H, W), got {describe(x)}")
        return x.shape[:2] + (1, 1)
