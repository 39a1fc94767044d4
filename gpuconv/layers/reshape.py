"""Flatten: (N, d1, d2, ...) -> (N, d1 * d2 * ...)."""
from __future__ import annotations

from ..backend import Array
from .base import Layer, describe


class Flatten(Layer):
    """Keeps axis 0 (the batch) and flattens the rest, like ``torch.nn.Flatten()``."""

    def __init__(self) -> None:
        super().__init__()
        self._cache = None

    def forward(self, x: Array) -> Array:
        if getattr(x, "ndim", 0) < 2:
            raise ValueError(f"{self!r}: expected an input with a batch axis (N, ...), got {describe(x)}")
        self._cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy: Array) -> Array:
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        return dy.reshape(self._cache)
