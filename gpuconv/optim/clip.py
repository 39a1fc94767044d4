"""Gradient clipping by global norm, like ``torch.nn.utils.clip_grad_norm_``.

Frozen parameters (``requires_grad`` False) are left out of the norm and are
not scaled, as torch leaves out parameters whose ``.grad`` is None.
"""
from __future__ import annotations

from typing import Any

from ..backend import Array, device_context_of, get_array_module
from .params import trainable

__all__ = ["clip_grad_norm", "grad_norm"]


def grad_norm(params: Any) -> Array:
    """Global L2 norm of the trainable parameters' gradients: a 0-d array on their device
    (dtype of the first grad)."""
    plist = trainable(params)
    if not plist:
        return get_array_module().zeros((), dtype="float64")
    xp = get_array_module(*(p.grad for p in plist))
    with device_context_of(plist[0].grad):
        total = xp.zeros((), dtype=plist[0].grad.dtype)
        for p in plist:
            flat = p.grad.reshape(-1)
            total += xp.dot(flat, flat)
        xp.sqrt(total, out=total)
    return total


def clip_grad_norm(params: Any, max_norm: float) -> Array:
    """Scale the trainable parameters' gradients in place so that their global L2 norm
    is at most ``max_norm``.

    ``params``: a model or an iterable of Parameters (all on one device).
    The factor ``min(1, max_norm / (norm + 1e-6))`` is computed and applied
    on the device (no host synchronisation). Returns the norm *before*
    clipping as a 0-d array on the gradients' device.
    """
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm: max_norm must be positive, got {max_norm}")
    plist = trainable(params)
    norm = grad_norm(plist)
    if not plist:
        return norm
    xp = get_array_module(norm)
    with device_context_of(norm):
        factor = norm.copy()
        factor += 1e-6
        xp.divide(float(max_norm), factor, out=factor)
        xp.minimum(factor, 1.0, out=factor)
        for p in plist:
            p.grad *= factor.astype(p.grad.dtype, copy=False)
    return norm
