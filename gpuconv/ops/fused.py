"""Fused update kernels with a pure-``xp`` reference path.

On CUDA (CuPy arrays) the fused path is one raw kernel launch per parameter
instead of about ten elementwise launches, which matters because CuPy's host
cost per launch is comparable to the GPU time of a small layer. Everywhere
else (NumPy, and the test suite's fake CuPy) the reference path runs; it uses
in-place operations so no per-step temporaries beyond two are allocated.
"""
from __future__ import annotations

import math

from ..backend import Array, backend_of_module, get_array_module
from .cuda_source import get_kernel

_THREADS = 256
_MAX_BLOCKS = 4096


def _use_cuda_kernel(xp, *arrays: Array) -> bool:
    return backend_of_module(xp).name == "cuda" and all(a.flags.c_contiguous for a in arrays)


def adam_update(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array, *, lr: float,
                beta1: float, beta2: float, eps: float, step: int, weight_decay: float = 0.0,
                decoupled: bool = False, use_kernel: bool | None = None) -> None:
    """One Adam/AdamW step, in place on ``param``, ``exp_avg`` and ``exp_avg_sq``.

    Same arithmetic as ``torch.optim.Adam`` (``decoupled=False``: L2 added to
    the gradient) and ``torch.optim.AdamW`` (``decoupled=True``). All arrays
    share shape, dtype (float32/float64) and device; ``step`` counts from 1.
    ``use_kernel`` forces (True) or forbids (False) the CUDA kernel; the
    default uses it whenever the arrays are CuPy arrays.
    """
    xp = get_array_module(param, grad, exp_avg, exp_avg_sq)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
    step_size = lr / bias_correction1
    if use_kernel is None:
        use_kernel = _use_cuda_kernel(xp, param, grad, exp_avg, exp_avg_sq)
    if use_kernel:
        kernel = get_kernel(xp, "adam_update", param.dtype)
        n = param.size
        blocks = min(_MAX_BLOCKS, (n + _THREADS - 1) // _THREADS)
        t = param.dtype.type
        kernel((blocks,), (_THREADS,),
               (param, grad, exp_avg, exp_avg_sq, t(lr), t(beta1), t(beta2), t(eps),
                t(step_size), t(bias_correction2_sqrt), t(weight_decay), xp.int32(decoupled),
                xp.int64(n)))
        return
    if decoupled:
        if weight_decay:
            param *= 1 - lr * weight_decay
    elif weight_decay:
        grad = grad + weight_decay * param
    exp_avg *= beta1
    exp_avg += (1 - beta1) * grad
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * grad * grad
    denom = xp.sqrt(exp_avg_sq)
    denom /= bias_correction2_sqrt
    denom += eps
    param -= step_size * (exp_avg / denom)
