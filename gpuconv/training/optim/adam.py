"""Adam and AdamW, like ``torch.optim.Adam`` / ``torch.optim.AdamW`` (amsgrad=False)."""
from __future__ import annotations

import math
from typing import Any

from ...backend import Array, backend_of_module, get_array_module
from ...layers.base import Parameter
from ...ops.fused import adam_update
from .base import Optimizer, check_range
from .regularizers import Regularizer

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam. Per step t (host-side python floats ``bc1 = 1 - b1^t``, ``bc2 = 1 - b2^t``)::

        g = grad + weight_decay * p                  # L2 in the gradient (Adam only)
        m = m + (1 - b1) * (g - m);  v = b2 * v + (1 - b2) * g^2
        p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)

    State per parameter (same shape/dtype/device as p): ``exp_avg`` (m),
    ``exp_avg_sq`` (v); the step count t is ``opt.step_count``.
    """

    _buffers = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0,
                 regularizer: Regularizer | None = None) -> None:
        super().__init__(params, lr, regularizer)
        name = type(self).__name__
        b1, b2 = betas
        self.betas = (check_range(f"{name}: betas[0]", b1, 0.0, 1.0, open_high=True),
                      check_range(f"{name}: betas[1]", b2, 0.0, 1.0, open_high=True))
        self.eps = check_range(f"{name}: eps", eps, 0.0)
        self.weight_decay = check_range(f"{name}: weight_decay", weight_decay, 0.0)

    def config(self) -> dict:
        return {**super().config(), "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay}

    def _update(self, p: Parameter, state: dict[str, Array], index: int) -> None:
        xp = get_array_module(p.data)
        b1, b2 = self.betas
        t = self.step_count
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if backend_of_module(xp).name == "cuda" and all(
                a.flags.c_contiguous for a in (p.data, p.grad, m, v)):
            # one fused CUDA kernel per parameter (gpuconv.ops.fused) instead of ~12 launches
            adam_update(p.data, p.grad, m, v, lr=self.lr, beta1=b1, beta2=b2, eps=self.eps,
                        step=t, weight_decay=self.weight_decay, decoupled=self._decoupled,
                        use_kernel=True)
            return
        if self._decoupled:
            if self.weight_decay:
                p.data *= 1.0 - self.lr * self.weight_decay
            g = p.grad
        else:
            g = self._grad(p, index, self.weight_decay)
        work = self._scratch(p, index, 1)
        xp.subtract(g, m, out=work)                     # m.lerp_(g, 1 - b1)
        work *= 1.0 - b1
        m += work
        v *= b2                                         # v = b2 v + (1 - b2) g^2
        xp.multiply(g, g, out=work)
        work *= 1.0 - b2
        v += work
        step_size = self.lr / (1.0 - b1 ** t)
        xp.sqrt(v, out=work)                            # denominator
        work /= math.sqrt(1.0 - b2 ** t)
        work += self.eps
        xp.divide(m, work, out=work)
        work *= step_size
        p.data -= work


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW``): before the Adam
    update ``p *= 1 - lr * weight_decay``; the gradient is used as is."""

    _decoupled = True

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2,
                 regularizer: Regularizer | None = None) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, regularizer)
