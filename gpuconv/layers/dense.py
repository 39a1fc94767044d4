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
    Under a float16 policy (:meth:`Layer.set_compute_dtype`) the product runs
    in float16 with a float16 copy of the float32 weights; the gradients are
    added into the float32 ``.grad`` and ``dx`` has the input's dtype.
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
        self._cache_amp = None  # (low-precision weight, input dtype) under autocast

    def config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.use_bias, "weight_init": initializers.to_config(self.weight_init),
                "bias_init": initializers.to_config(self.bias_init)}

    def forward(self, x: Array) -> Array:
        self._check_input(x, 2, self.in_features, "(N, in_features)")
        dtype = self._autocast_dtype()
        if dtype is None:
            self._cache_amp = None
            self._cache = x
            y = x @ self.weight.data
            if self.bias is not None:
                y += self.bias.data
            return y
        weight = self.weight.data.astype(dtype)  # one cast per forward, kept for backward
        self._cache_amp = (weight, x.dtype)
        x = x.astype(dtype, copy=False)
        self._cache = x
        y = x @ weight
        if self.bias is not None:
            y += self.bias.data.astype(dtype)
        return y

    def backward(self, dy: Array) -> Array:
        if self._cache_amp is None:
            self.backward_params(dy)
            return dy @ self.weight.data.T
        weight, in_dtype = self._cache_amp
        dy = dy.astype(weight.dtype, copy=False)
        self._backward_params(dy)
        return (dy @ weight.T).astype(in_dtype, copy=False)

    def backward_params(self, dy: Array) -> None:
        if self._cache_amp is not None:
            dy = dy.astype(self._cache_amp[0].dtype, copy=False)
        self._backward_params(dy)

    def _backward_params(self, dy: Array) -> None:
        x = self._cache
        if x is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        if tuple(dy.shape) != (x.shape[0], self.out_features):
            raise ValueError(f"{self!r}: backward expected dy of shape "
                             f"{(x.shape[0], self.out_features)}, got {tuple(dy.shape)}")
        if self.weight.requires_grad:  # frozen (Layer.freeze): no GEMM, no gradient
            self.weight.grad += x.T @ dy  # under autocast: a float16 product, upcast by +=
        if self.bias is not None and self.bias.requires_grad:
            if dy.dtype == self.bias.grad.dtype:
                self.bias.grad += dy.sum(axis=0)
            else:  # float16 dy: accumulate the sum in the gradient's dtype
                self.bias.grad += dy.sum(axis=0, dtype=self.bias.grad.dtype)
