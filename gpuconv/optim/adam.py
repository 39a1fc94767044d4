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
    """Adam. Per update t of a parameter (host-side python floats ``bc1 = 1 - b1^t``,
    ``bc2 = 1 - b2^t``), with its group's hyper-parameters::

        g = grad + weight_decay * p                  # L2 in the gradient (Adam only)
        m = m + (1 - b1) * (g - m);  v = b2 * v + (1 - b2) * g^2
        p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)

    State per parameter (same shape/dtype/device as p): ``exp_avg`` (m),
    ``exp_avg_sq`` (v). t counts the parameter's own updates (steps while it
    was frozen do not count, like torch's per-parameter ``state["step"]``).
    On CUDA each parameter is one fused kernel launch with its group's values
    (:func:`gpuconv.ops.fused.adam_update`).

    Parameter-group keys: ``params``, ``lr``, ``betas``, ``eps``, ``weight_decay``.
    """

    _buffers = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0,
                 regularizer: Regularizer | None = None) -> None:
        super().__init__(params, lr, regularizer, betas=betas, eps=eps,
                         weight_decay=weight_decay)

    def _validate(self, values: dict[str, Any], where: str,
                  lr_optional: bool = False) -> dict[str, Any]:
        out = super()._validate(values, where, lr_optional)
        name = f"{type(self).__name__}{where}"
        b1, b2 = out["betas"]
        out["betas"] = (check_range(f"{name}: betas[0]", b1, 0.0, 1.0, open_high=True),
                        check_range(f"{name}: betas[1]", b2, 0.0, 1.0, open_high=True))
        out["eps"] = check_range(f"{name}: eps", out["eps"], 0.0)
        out["weight_decay"] = check_range(f"{name}: weight_decay", out["weight_decay"], 0.0)
        return out

    def _update(self, p: Parameter, state: dict[str, Array], index: int,
                group: dict[str, Any]) -> None:
        # one fused CUDA kernel per parameter on the GPU, in-place xp ops elsewhere; the
        # two parameter-sized scratch buffers are made (and kept) only for the xp ops
        beta1, beta2 = group["betas"]
        adam_update(p.data, p.grad, state["exp_avg"], state["exp_avg_sq"], lr=group["lr"],
                    beta1=beta1, beta2=beta2, eps=group["eps"], step=self._steps[index],
                    weight_decay=group["weight_decay"], decoupled=self._decoupled,
                    work=lambda: (self._scratch(p, index, 0), self._scratch(p, index, 1)))


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW``): before the Adam
    update ``p *= 1 - lr * weight_decay`` (the group's lr and weight_decay); the
    gradient is used as is."""

    _decoupled = True

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2,
                 regularizer: Regularizer | None = None) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, regularizer)
