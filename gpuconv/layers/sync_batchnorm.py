"""Batch normalisation whose statistics cover the global batch of all ranks.

With data parallelism each rank sees only its shard; plain BatchNorm then
normalises with the shard's statistics (PyTorch DDP's default, and ours).
SyncBatchNorm computes them over the global batch, so N ranks give the
one-process result:

- forward (training): one allreduce of ``[sum(d), sum(d*d), count]`` per
  channel, with ``d = x - running_mean`` (the same shift on every rank; it
  keeps ``E[d^2] - E[d]^2`` well conditioned once the running mean tracks the
  data), then mean and biased variance of the global batch;
- backward: one allreduce of ``[sum(dy), sum(dy * (x - mean))]`` per channel,
  each rank's sums weighted by its share ``n_r / n`` of the samples (the same
  weighting ``fit``'s gradient averaging applies), then the usual
  training-mode input gradient with the global means. The weight and bias
  gradients stay local; the gradient averaging combines them.

``comm`` is any object with ``size`` and an in-place ``allreduce_sum(list of
arrays)`` (a :mod:`gpuconv.distributed` communicator); ``None`` or a size-1
communicator, and eval mode, behave exactly as BatchNorm. ``comm`` is not
part of ``config()``: a saved model loads with ``comm=None``, and
``fit(..., comm=comm)`` binds its communicator to SyncBatchNorm layers that
have none.
"""
from __future__ import annotations

from typing import Any

from ..backend import Array
from ..ops.fused import batchnorm_input_grad, batchnorm_normalize
from ..ops.reduce import channel_dot, channel_sum
from .base import is_grad_enabled
from .normalization import BatchNorm1d, BatchNorm2d

__all__ = ["SyncBatchNorm1d", "SyncBatchNorm2d"]


class _SyncStats:
    """The global-batch forward/backward, mixed into BatchNorm1d/2d."""

    comm: Any = None
    _cache_sync: Any = None

    def _synced(self) -> bool:
        return self.training and self.comm is not None and self.comm.size > 1

    def forward(self, x: Array) -> Array:
        if not self._synced():
            self._cache_sync = None
            return super().forward(x)
        c = self.num_features
        xp = self._check_input(x, self._ndim, c, self._layout)
        in_dtype = x.dtype
        if in_dtype != self.weight.data.dtype:
            x = x.astype(self.weight.data.dtype)
        bshape = self._channel_shape(x)
        count = x.size // c
        d = x - self.running_mean.reshape(bshape)
        stats = xp.empty(2 * c + 1, dtype=x.dtype)
        stats[:c] = channel_sum(d)
        stats[c:2 * c] = channel_dot(d, d)
        stats[2 * c] = count
        self.comm.allreduce_sum([stats])
        total = stats[2 * c:]                      # (1,) on the device: no host read
        mean_d = stats[:c] / total
        mean = mean_d + self.running_mean          # before the running mean moves
        var = xp.maximum(stats[c:2 * c] / total - mean_d * mean_d, 0)
        d -= mean_d.reshape(bshape)                # now x - global mean
        centred = d
        m = self.momentum
        self.running_mean *= 1 - m
        self.running_mean += m * mean
        self.running_var *= 1 - m
        self.running_var += (m * total / (total - 1)) * var
        inv_std = 1 / xp.sqrt(var + self.eps)
        y = batchnorm_normalize(centred, inv_std, self.weight.data, self.bias.data)
        if is_grad_enabled():
            self._cache = (centred, inv_std, None, in_dtype)
            self._cache_sync = (count, total)
        else:
            self._cache = self._cache_sync = None
        return y if y.dtype == in_dtype else y.astype(in_dtype)

    def backward(self, dy: Array) -> Array:
        if self._cache_sync is None:
            return super().backward(dy)
        centred, inv_std, _, in_dtype = self._cache
        count, total = self._cache_sync
        if tuple(dy.shape) != tuple(centred.shape):
            raise ValueError(f"{self!r}: backward expected dy of shape {tuple(centred.shape)}, "
                             f"got {tuple(dy.shape)}")
        c = self.num_features
        xp = self._check_input(dy, self._ndim, c, self._layout)
        if dy.dtype != centred.dtype:
            dy = dy.astype(centred.dtype)
        sums = xp.empty(2 * c, dtype=dy.dtype)
        sums[:c] = channel_sum(dy)
        sums[c:] = channel_dot(dy, centred)
        self.bias.grad += sums[:c]
        self.weight.grad += sums[c:] * inv_std
        sums *= count / total                      # this rank's share of the global batch
        self.comm.allreduce_sum([sums])
        scale = self.weight.data * inv_std
        dx = batchnorm_input_grad(dy, centred, scale, sums[:c] * (1.0 / count),
                                  sums[c:] * (inv_std * inv_std / count))
        return dx if dx.dtype == in_dtype else dx.astype(in_dtype)


class SyncBatchNorm1d(_SyncStats, BatchNorm1d):
    """BatchNorm1d over the global batch of all ranks (x (N, C)); see the module doc."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, *,
                 dtype: Any = "float32", comm: Any = None) -> None:
        super().__init__(num_features, eps, momentum, dtype=dtype)
        self.comm = comm


class SyncBatchNorm2d(_SyncStats, BatchNorm2d):
    """BatchNorm2d over the global batch of all ranks (x (N, C, H, W)); see the module doc."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, *,
                 dtype: Any = "float32", comm: Any = None) -> None:
        super().__init__(num_features, eps, momentum, dtype=dtype)
        self.comm = comm
