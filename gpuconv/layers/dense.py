"""Dense (fully connected): y = x @ W + b."""
from __future__ import annotations

from typing import Any

import numpy

from ..backend import Array
from . import init as initializers
from .base import Layer, Parameter
from .conv import positive_int_tuple


class Dense(Layer):
    """x (N, in_features) -> y (N, out_features); ``weight`` (in, out), ``bias`` (out,).

    Note the weight layout is the transpose of ``torch.nn.Linear.weight``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight_init: Any = None, bias_init: Any = None, dtype: Any = "float32") -> None:
        super().__init__()
        self.in_features = positive_int_tuple(in_features, 1, "in_features", "Dense")[0]
        self.out_features = positive_int_tuple(out_features, 1, "out_features", "Dense")[0]
        self.use_bias = bool(bias)
        self.weight_init = initializers.get(weight_init, initializers.HeNormal())
        self.bias_init = initializers.get(bias_init, initializers.Constant(0.0))
        dtype = numpy.dtype(dtype)
        fans = (self.in_features, self.out_features)
        self.weight = Parameter(self.weight_init(fans, *fans, numpy, dtype), "weight")
        self.bias = Parameter(self.bias_init((self.out_features,), *fans, numpy, dtype),
                              "bias") if self.use_bias else None
        self._cache = None

    def config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.use_bias, "weight_init": initializers.to_config(self.weight_init),
                "bias_init": initializers.to_config(self.bias_init)}

    def forward(self, x: Array) -> Array:
        self._check_input(x, 2, self.in_features, "(N, in_features)")
        self._cache = x
        y = x @ self.weight.data
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, dy: Array) -> Array:
        self.backward_params(dy)
        return dy @ self.weight.data.T

    def backward_params(self, dy: Array) -> None:
        x = self._cache
        if x is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        if tuple(dy.shape) != (x.shape[0], self.out_features):
            raise ValueError(f"{self!r}: backward expected dy of shape "
                             f"{(x.shape[0], self.out_features)}, got {tuple(dy.shape)}")
        self.weight.grad += x.T @ dy
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=0)
