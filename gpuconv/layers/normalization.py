"""Batch normalisation over (N, C) and (N, C, H, W), with PyTorch's running statistics."""
from __future__ import annotations

from typing import Any

import numpy

from ..backend import Array
from ..ops.fused import batchnorm_input_grad, batchnorm_normalize, channel_rows
from ..ops.reduce import channel_dot, channel_sum
from .base import Layer, Parameter, is_grad_enabled
from .conv import positive_int_tuple


class _BatchNorm(Layer):
    """Normalise each channel over the batch (and spatial) axes.

    Training: batch mean and biased variance normalise ``x``; ``running_mean``
    and ``running_var`` move towards the batch mean and the *unbiased*
    variance with ``momentum`` (PyTorch's rule). Eval: the running statistics
    normalise. ``weight`` (gamma, init 1) and ``bias`` (beta, init 0) are
    learnable; the running statistics are buffers, never optimised.

    airbench's BatchNorm (weight fixed at 1, PyTorch momentum 0.4, eps 1e-12) is
    ``BatchNorm2d(C, eps=1e-12, momentum=0.4).freeze("weight")``: a frozen
    parameter gets no gradient (:meth:`Layer.freeze`).

    Under a mixed-precision policy (:meth:`Layer.set_compute_dtype`) a float16
    input is normalised in the parameters' dtype (float32 statistics, running
    statistics and gradients) and the output and ``dx`` are float16 again.
    """

    _buffer_names = ("running_mean", "running_var")
    _ndim = 0
    _layout = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, *,
                 dtype: Any = "float32") -> None:
        super().__init__()
        name = type(self).__name__
        self.num_features = positive_int_tuple(num_features, 1, "num_features", name)[0]
        if not eps > 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1], got {momentum!r}")
        self.eps = float(eps)
        self.momentum = float(momentum)
        dtype = numpy.dtype(dtype)
        self.weight = Parameter(numpy.ones(self.num_features, dtype=dtype), "weight")
        self.bias = Parameter(numpy.zeros(self.num_features, dtype=dtype), "bias")
        self.running_mean = numpy.zeros(self.num_features, dtype=dtype)
        self.running_var = numpy.ones(self.num_features, dtype=dtype)
        self._cache = None

    def config(self) -> dict:
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum}

    def _channel_shape(self, x: Array) -> tuple[int, ...]:
        """The broadcast shape of per-channel vectors over ``x``."""
        return (1, -1) if x.ndim == 2 else (1, -1, 1, 1)

    def forward(self, x: Array) -> Array:
        xp = self._check_input(x, self._ndim, self.num_features, self._layout)
        in_dtype = x.dtype
        if in_dtype != self.weight.data.dtype:  # float16 under autocast: work in float32
            x = x.astype(self.weight.data.dtype)
        bshape = self._channel_shape(x)
        count = x.size // self.num_features
        if not self.training:
            return self._forward_running_stats(x, xp, bshape, in_dtype)
        if count < 2:
            raise ValueError(f"{self!r}: training needs more than one value per channel "
                             f"to compute a variance, got input shape {tuple(x.shape)}")
        mean = channel_sum(x) / count
        flat, mean_rows = channel_rows(x, mean)
        centred = (flat - mean_rows).reshape(x.shape)
        var = channel_dot(centred, centred) / count  # two-pass: exact for large means
        m = self.momentum
        self.running_mean *= 1 - m
        self.running_mean += m * mean
        self.running_var *= 1 - m
        self.running_var += (m * count / (count - 1)) * var
        inv_std = 1 / xp.sqrt(var + self.eps)
        y = batchnorm_normalize(centred, inv_std, self.weight.data, self.bias.data)
        # the centred input (not x_hat = centred * inv_std) is kept: one pass less per step
        self._cache = (centred, inv_std, None, in_dtype) if is_grad_enabled() else None
        return y if y.dtype == in_dtype else y.astype(in_dtype)

    def _forward_running_stats(self, x: Array, xp, bshape: tuple[int, ...], in_dtype) -> Array:
        """Eval mode: ``y = x * scale + shift`` per channel, two passes over x (the form
        PyTorch's CPU inference uses); x itself is kept for a backward pass."""
        inv_std = 1 / xp.sqrt(self.running_var + self.eps)
        scale = self.weight.data * inv_std
        y = x * scale.reshape(bshape)
        y += (self.bias.data - self.running_mean * scale).reshape(bshape)
        self._cache = ((x, inv_std, self.running_mean.copy(), in_dtype) if is_grad_enabled()
                       else None)
        return y if y.dtype == in_dtype else y.astype(in_dtype)

    def backward(self, dy: Array) -> Array:
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward() called before forward() (or after a "
                               f"forward under gpuconv.no_grad(), which keeps nothing)")
        centred, inv_std, running_mean, in_dtype = self._cache
        if tuple(dy.shape) != tuple(centred.shape):
            raise ValueError(f"{self!r}: backward expected dy of shape {tuple(centred.shape)}, "
                             f"got {tuple(dy.shape)}")
        self._check_input(dy, self._ndim, self.num_features, self._layout)
        if dy.dtype != centred.dtype:  # float16 under autocast
            dy = dy.astype(centred.dtype)
        bshape = self._channel_shape(dy)
        used_batch_stats = running_mean is None
        if not used_batch_stats:  # eval mode kept x: centre it on the statistics it used
            centred = centred - running_mean.reshape(bshape)
        # frozen weight/bias (Layer.freeze) get nothing; their sums are still needed
        # for dx with batch statistics, not with running statistics
        need_gamma, need_beta = self.weight.requires_grad, self.bias.requires_grad
        if used_batch_stats or need_beta:
            dbeta = channel_sum(dy)
            if need_beta:
                self.bias.grad += dbeta
        if used_batch_stats or need_gamma:
            dgamma = channel_dot(dy, centred) * inv_std  # sum(dy * x_hat)
            if need_gamma:
                self.weight.grad += dgamma
        scale = self.weight.data * inv_std
        if not used_batch_stats:  # running statistics are constants
            dx = dy * scale.reshape(bshape)
        else:
            count = dy.size // self.num_features
            # d/dx of gamma * (x - mean) / std when mean and var come from x itself;
            # x_hat * mean(dy * x_hat) == centred * (inv_std * dgamma / count)
            dx = batchnorm_input_grad(dy, centred, scale, dbeta * (1.0 / count),
                                      dgamma * (inv_std / count))
        return dx if dx.dtype == in_dtype else dx.astype(in_dtype)


class BatchNorm1d(_BatchNorm):
    """Batch norm of x (N, C): statistics over the batch axis."""

    _ndim = 2
    _layout = "(N, C)"


class BatchNorm2d(_BatchNorm):
    """Batch norm of x (N, C, H, W): statistics over N, H and W per channel."""

    _ndim = 4
    _layout = "(N, C, H, W)"
