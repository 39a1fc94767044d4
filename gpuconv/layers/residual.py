"""Residual block: y = body(x) + shortcut(x)."""
from __future__ import annotations

from typing import Sequence

from ..backend import Array
from .base import Layer


def _chain(layers: Sequence[Layer], x: Array) -> Array:
    for layer in layers:
        x = layer.forward(x)
    return x


def _chain_back(layers: Sequence[Layer], dy: Array) -> Array:
    for layer in reversed(layers):
        dy = layer.backward(dy)
    return dy


class Residual(Layer):
    """``y = body(x) + shortcut(x)``; the shortcut is the identity by default.

    ``body`` and ``shortcut`` are a layer or a list of layers applied in order
    (for example a 1x1 strided Conv2D + BatchNorm2d shortcut when the body
    changes the shape).
    """

    def __init__(self, body: "Layer | Sequence[Layer]",
                 shortcut: "Layer | Sequence[Layer] | None" = None) -> None:
        super().__init__()
        self.body = [body] if isinstance(body, Layer) else list(body)
        self.shortcut = [] if shortcut is None else (
            [shortcut] if isinstance(shortcut, Layer) else list(shortcut))
        for part in self.body + self.shortcut:
            if not isinstance(part, Layer):
                raise TypeError(f"Residual: body and shortcut must be layers, got {part!r}")
        if not self.body:
            raise ValueError("Residual: body must contain at least one layer")
        self._cache = None

    def children(self) -> list[Layer]:
        return self.body + self.shortcut

    def named_parameters(self, prefix: str = ""):
        for group, layers in (("body", self.body), ("shortcut", self.shortcut)):
            for i, layer in enumerate(layers):
                yield from layer.named_parameters(f"{prefix}{group}.{i}.")

    def named_buffers(self, prefix: str = ""):
        for group, layers in (("body", self.body), ("shortcut", self.shortcut)):
            for i, layer in enumerate(layers):
                yield from layer.named_buffers(f"{prefix}{group}.{i}.")

    def forward(self, x: Array) -> Array:
        main = _chain(self.body, x)
        skip = _chain(self.shortcut, x)
        if tuple(main.shape) != tuple(skip.shape):
            raise ValueError(f"Residual: body output shape {tuple(main.shape)} does not match "
                             f"shortcut output shape {tuple(skip.shape)}; give a shortcut that "
                             "maps the input to the body's output shape")
        # under a float16 policy the branches may differ (float16 body, float32 identity
        # shortcut of a float32 input): the sum promotes, and backward hands each branch
        # its gradient in the dtype that branch produced
        self._cache = (main.dtype, skip.dtype)
        return main + skip

    def backward(self, dy: Array) -> Array:
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        main_dtype, skip_dtype = self._cache
        return (_chain_back(self.body, dy.astype(main_dtype, copy=False))
                + _chain_back(self.shortcut, dy.astype(skip_dtype, copy=False)))
