"""Adam and AdamW, like ``torch.optim.Adam`` / ``torch.optim.AdamW`` (amsgrad=False)."""
from __future__ import annotations

from typing import Any

from ..backend import Array
from ..layers.base import Parameter
from ..ops.fused import adam_update
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
        # one fused CUDA kernel per parameter on the GPU, in-place xp ops elsewhere
        adam_update(p.data, p.grad, state["exp_avg"], state["exp_avg_sq"], lr=self.lr,
                    beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                    step=self.step_count, weight_decay=self.weight_decay,
                    decoupled=self._decoupled,
                    work=(self._scratch(p, index, 0), self._scratch(p, index, 1)))


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW``): before the Adam
    update ``p *= 1 - lr * weight_decay``; the gradient is used as is."""

    _decoupled = True

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2,
                 regularizer: Regularizer | None = None) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, regularizer)
