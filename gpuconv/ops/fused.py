"""Fused elementwise kernels (Adam, BatchNorm, ReLU) with a pure-``xp`` reference path.

On CUDA (CuPy arrays) the fused path is one raw kernel launch per parameter
instead of about ten elementwise launches, which matters because CuPy's host
cost per launch is comparable to the GPU time of a small layer. Everywhere
else (NumPy, and the test suite's fake CuPy) the reference path runs; it uses
in-place operations so no per-step temporaries beyond two are allocated.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy

from ..backend import Array, get_array_module
from .cuda_source import launch as _launch
from .cuda_source import use_kernel as _use_cuda_kernel


def channel_rows(x: Array, values: Array) -> tuple[Array, Array]:
    """``(x2, pattern)`` with ``x2 op pattern`` == ``x op values`` broadcast per channel
    over x (N, C, ...), for elementwise ops: x2 is x as (N, C*L) (a view; x C-contiguous)
    and ``pattern`` (1, C*L) the per-channel values repeated over the L spatial positions.
    NumPy's inner loop then runs over a whole image instead of one channel's L values
    (L = 9 or 49 at airbench's 3x3 and 7x7): measured 1.6-2x faster per pass. For other
    layouts, ``(x, values as (1, C, 1, ...))``."""
    xp = get_array_module(x, values)
    n, channels = x.shape[:2]
    inner = x.size // (n * channels) if n * channels else 1
    if x.ndim == 2 or not x.flags.c_contiguous or x.size == 0:
        return x, values.reshape((1, channels) + (1,) * (x.ndim - 2))
    return x.reshape(n, -1), xp.repeat(values, inner).reshape(1, -1)


def batchnorm_normalize(centred: Array, inv_std: Array, gamma: Array, beta: Array,
                        use_kernel: bool | None = None) -> Array:
    """``y = centred * inv_std * gamma + beta`` (a new array) for ``centred`` (N, C, ...)
    = x minus its per-channel mean; per-channel vectors are (C,). ``centred`` is
    not modified."""
    xp = get_array_module(centred, inv_std, gamma, beta)
    channels = centred.shape[1]
    inner = centred.size // (centred.shape[0] * channels) if centred.size else 1
    if use_kernel is None:
        use_kernel = _use_cuda_kernel(xp, centred, inv_std, gamma, beta)
    if use_kernel:
        y = xp.empty_like(centred)
        _launch(xp, "bn_normalize", centred.dtype, centred.size,
                (centred, y, inv_std, gamma, beta, xp.int64(inner), xp.int64(channels),
                 xp.int64(centred.size)))
        return y
    flat, scale = channel_rows(centred, gamma * inv_std)
    y = flat * scale                                  # two passes over the batch
    y += channel_rows(centred, beta)[1]
    return y.reshape(centred.shape)


def batchnorm_input_grad(dy: Array, centred: Array, scale: Array, mean_dy: Array,
                         centred_coef: Array, use_kernel: bool | None = None) -> Array:
    """``dx = scale * (dy - mean_dy - centred * centred_coef)`` with per-channel (C,)
    vectors broadcast over (N, C, ...): BatchNorm's input gradient in training mode
    (``scale = gamma * inv_std``, ``mean_dy`` the channel means of dy and
    ``centred_coef = inv_std**2 * mean(dy * centred)``)."""
    xp = get_array_module(dy, centred, scale, mean_dy, centred_coef)
    channels = dy.shape[1]
    if use_kernel is None:
        use_kernel = _use_cuda_kernel(xp, dy, centred, scale, mean_dy, centred_coef)
    if use_kernel:
        dx = xp.empty_like(dy)
        _launch(xp, "bn_input_grad", dy.dtype, dy.size,
                (dy, centred, dx, scale, mean_dy, centred_coef,
                 xp.int64(dy.size // (dy.shape[0] * channels)), xp.int64(channels),
                 xp.int64(dy.size)))
        return dx
    flat, coef = channel_rows(centred, -centred_coef)
    dx = flat * coef                                  # four passes, no other temporary
    dx += dy.reshape(dx.shape)                        # a view for C-contiguous dy
    dx -= channel_rows(centred, mean_dy)[1]
    dx *= channel_rows(centred, scale)[1]
    return dx.reshape(dy.shape)


def relu_grad(dy: Array, y: Array, use_kernel: bool | None = None) -> Array:
    """``dx = dy where y > 0 else 0`` (ReLU's backward from its output ``y``)."""
    xp = get_array_module(dy, y)
    if use_kernel is None:
        use_kernel = _use_cuda_kernel(xp, dy, y)
    if use_kernel:
        dx = xp.empty_like(dy)
        _launch(xp, "relu_grad", dy.dtype, dy.size, (dy, y, dx, xp.int64(dy.size)))
        return dx
    return dy * (y > 0)


# Elements per block of the NumPy path (256 KiB of float32 per array: six such blocks stay in
# a core's 2 MiB L2): seed-cnn's Adam step (1.28 M parameters, one AVX-512 Xeon thread) 5.8 ->
# 5.1 ms; 4096-element blocks are slower than none (3,700 more NumPy calls).
ADAM_BLOCK = 65536


def adam_update(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array, *, lr: float,
                beta1: float, beta2: float, eps: float, step: int, weight_decay: float = 0.0,
                decoupled: bool = False, use_kernel: bool | None = None,
                work: tuple[Array, Array] | Callable[[], tuple[Array, Array]] | None = None,
                ) -> None:
    """One Adam/AdamW step, in place on ``param``, ``exp_avg`` and ``exp_avg_sq``.

    Same arithmetic as ``torch.optim.Adam`` (``decoupled=False``: L2 added to
    the gradient) and ``torch.optim.AdamW`` (``decoupled=True``). All arrays
    share shape, dtype (float32/float64) and device; ``step`` counts from 1;
    ``grad`` is not modified. ``use_kernel`` forces (True) or forbids (False)
    the CUDA kernel; the default uses it whenever the arrays are contiguous
    CuPy arrays. ``work``: two scratch arrays like ``param`` for the reference
    path, or a function returning them, called only when that path runs (the
    kernel needs none); allocated when omitted.
    """
    xp = get_array_module(param, grad, exp_avg, exp_avg_sq)
    bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
    step_size = lr / (1 - beta1 ** step)
    if use_kernel is None:
        use_kernel = _use_cuda_kernel(xp, param, grad, exp_avg, exp_avg_sq)
    if use_kernel:
        t = param.dtype.type
        _launch(xp, "adam_update", param.dtype, param.size,
                (param, grad, exp_avg, exp_avg_sq, t(lr), t(beta1), t(beta2), t(eps),
                 t(step_size), t(bias_correction2_sqrt), t(weight_decay), xp.int32(decoupled),
                 xp.int64(param.size)))
        return
    if callable(work):
        work = work()
    g_work, work = work if work is not None else (xp.empty_like(param), xp.empty_like(param))
    arrays = (param, grad, exp_avg, exp_avg_sq, g_work, work)
    if xp is numpy and param.size > ADAM_BLOCK and all(a.flags.c_contiguous for a in arrays):
        # the 12 passes over one block stay in the core's cache instead of streaming six
        # parameter-sized arrays from memory 12 times
        flat = [a.reshape(-1) for a in arrays]
        for start in range(0, param.size, ADAM_BLOCK):
            block = slice(start, start + ADAM_BLOCK)
            _adam_passes(xp, *(a[block] for a in flat), lr, beta1, beta2, eps, step_size,
                         bias_correction2_sqrt, weight_decay, decoupled)
        return
    _adam_passes(xp, *arrays, lr, beta1, beta2, eps, step_size, bias_correction2_sqrt,
                 weight_decay, decoupled)


def _adam_passes(xp, param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array,
                 g_work: Array, work: Array, lr: float, beta1: float, beta2: float, eps: float,
                 step_size: float, bias_correction2_sqrt: float, weight_decay: float,
                 decoupled: bool) -> None:
    """:func:`adam_update`'s reference path as in-place xp operations on same-shaped arrays."""
    if decoupled:
        if weight_decay:
            param *= 1.0 - lr * weight_decay
    elif weight_decay:
        xp.multiply(param, weight_decay, out=g_work)
        g_work += grad
        grad = g_work
    xp.subtract(grad, exp_avg, out=work)            # m = m + (1 - b1)(g - m), torch's lerp
    work *= 1.0 - beta1
    exp_avg += work
    exp_avg_sq *= beta2                             # v = b2 v + (1 - b2) g^2
    xp.multiply(grad, grad, out=work)
    work *= 1.0 - beta2
    exp_avg_sq += work
    xp.sqrt(exp_avg_sq, out=work)                   # denominator sqrt(v) / sqrt(bc2) + eps
    work /= bias_correction2_sqrt
    work += eps
    xp.divide(exp_avg, work, out=work)
    work *= step_size
    param -= work
