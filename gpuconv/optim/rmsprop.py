"""RMSprop, like ``torch.optim.RMSprop``."""
from __future__ import annotations

from typing import Any

from ..backend import Array, get_array_module
from ..layers.base import Parameter
from .base import Optimizer, check_range
from .regularizers import Regularizer

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    """RMSprop, per parameter with its group's hyper-parameters::

        g = grad + weight_decay * p
        s = alpha * s + (1 - alpha) * g^2                      # square_avg
        centered: a = a + (1 - alpha) * (g - a); d = sqrt(s - a^2) + eps   # grad_avg a
        else:     d = sqrt(s) + eps
        momentum > 0: buf = momentum * buf + g / d; p -= lr * buf
        else:         p -= lr * g / d

    State: ``square_avg``, plus ``momentum_buffer`` (momentum > 0) and
    ``grad_avg`` (centered), each like p. Parameter-group keys: ``params``,
    ``lr``, ``alpha``, ``eps``, ``weight_decay``, ``momentum``, ``centered``.
    """

    def __init__(self, params: Any, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 regularizer: Regularizer | None = None) -> None:
        super().__init__(params, lr, regularizer, alpha=alpha, eps=eps,
                         weight_decay=weight_decay, momentum=momentum, centered=centered)

    def _validate(self, values: dict[str, Any], where: str,
                  lr_optional: bool = False) -> dict[str, Any]:
        out = super()._validate(values, where, lr_optional)
        name = f"RMSprop{where}"
        for key in ("alpha", "eps", "weight_decay", "momentum"):
            out[key] = check_range(f"{name}: {key}", out[key], 0.0)
        out["centered"] = bool(out["centered"])
        return out

    def _needed_buffers(self, group: dict[str, Any]) -> tuple[str, ...]:
        names = ("square_avg",)
        if group["momentum"]:
            names += ("momentum_buffer",)
        if group["centered"]:
            names += ("grad_avg",)
        return names

    def _update(self, p: Parameter, state: dict[str, Array], index: int,
                group: dict[str, Any]) -> None:
        xp = get_array_module(p.data)
        alpha, momentum = group["alpha"], group["momentum"]
        g = self._grad(p, index, group["weight_decay"])
        work = self._scratch(p, index, 1)
        s = state["square_avg"]
        s *= alpha
        xp.multiply(g, g, out=work)
        work *= 1.0 - alpha
        s += work
        if group["centered"]:
            a = state["grad_avg"]
            xp.subtract(g, a, out=work)                 # a.lerp_(g, 1 - alpha)
            work *= 1.0 - alpha
            a += work
            xp.multiply(a, a, out=work)
            xp.subtract(s, work, out=work)
            xp.sqrt(work, out=work)
        else:
            xp.sqrt(s, out=work)
        work += group["eps"]
        xp.divide(g, work, out=work)                    # g / d
        if momentum:
            buf = state["momentum_buffer"]
            buf *= momentum
            buf += work
            xp.multiply(buf, group["lr"], out=work)
        else:
            work *= group["lr"]
        p.data -= work
