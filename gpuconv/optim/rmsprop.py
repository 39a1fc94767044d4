"""RMSprop, like ``torch.optim.RMSprop``."""
from __future__ import annotations

from typing import Any

from ..backend import Array, get_array_module
from ..layers.base import Parameter
from .base import Optimizer, check_range
from .regularizers import Regularizer

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    """RMSprop::

        g = grad + weight_decay * p
        s = alpha * s + (1 - alpha) * g^2                      # square_avg
        centered: a = a + (1 - alpha) * (g - a); d = sqrt(s - a^2) + eps   # grad_avg a
        else:     d = sqrt(s) + eps
        momentum > 0: buf = momentum * buf + g / d; p -= lr * buf
        else:         p -= lr * g / d

    State: ``square_avg``, plus ``momentum_buffer`` (momentum > 0) and
    ``grad_avg`` (centered), each like p.
    """

    def __init__(self, params: Any, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 regularizer: Regularizer | None = None) -> None:
        super().__init__(params, lr, regularizer)
        self.alpha = check_range("RMSprop: alpha", alpha, 0.0)
        self.eps = check_range("RMSprop: eps", eps, 0.0)
        self.weight_decay = check_range("RMSprop: weight_decay", weight_decay, 0.0)
        self.momentum = check_range("RMSprop: momentum", momentum, 0.0)
        self.centered = bool(centered)

    def config(self) -> dict:
        return {**super().config(), "alpha": self.alpha, "eps": self.eps,
                "weight_decay": self.weight_decay, "momentum": self.momentum,
                "centered": self.centered}

    def _needed_buffers(self) -> tuple[str, ...]:
        names = ("square_avg",)
        if self.momentum:
            names += ("momentum_buffer",)
        if self.centered:
            names += ("grad_avg",)
        return names

    def _update(self, p: Parameter, state: dict[str, Array], index: int) -> None:
        xp = get_array_module(p.data)
        g = self._grad(p, index, self.weight_decay)
        work = self._scratch(p, index, 1)
        s = state["square_avg"]
        s *= self.alpha
        xp.multiply(g, g, out=work)
        work *= 1.0 - self.alpha
        s += work
        if self.centered:
            a = state["grad_avg"]
            xp.subtract(g, a, out=work)                 # a.lerp_(g, 1 - alpha)
            work *= 1.0 - self.alpha
            a += work
            xp.multiply(a, a, out=work)
            xp.subtract(s, work, out=work)
            xp.sqrt(work, out=work)
        else:
            xp.sqrt(s, out=work)
        work += self.eps
        xp.divide(g, work, out=work)                    # g / d
        if self.momentum:
            buf = state["momentum_buffer"]
            buf *= self.momentum
            buf += work
            xp.multiply(buf, self.lr, out=work)
        else:
            work *= self.lr
        p.data -= work
