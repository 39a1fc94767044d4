"""Stochastic gradient descent with momentum / Nesterov, like ``torch.optim.SGD``."""
from __future__ import annotations

from typing import Any

from ..backend import Array, get_array_module
from ..layers.base import Parameter
from .base import Optimizer, check_range
from .regularizers import Regularizer

__all__ = ["SGD"]


class SGD(Optimizer):
    """SGD: ``g = grad + wd * p``; ``buf = momentum * buf + (1 - dampening) * g``
    (``buf = g`` on the first step); ``p -= lr * (g + momentum * buf if nesterov else buf)``.

    Without momentum: ``p -= lr * g``. State: ``momentum_buffer`` (like p)
    when ``momentum > 0``. ``weight_decay`` is L2 added to the gradient
    (``p.grad`` itself is left unchanged).
    """

    def __init__(self, params: Any, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, dampening: float = 0.0,
                 regularizer: Regularizer | None = None) -> None:
        super().__init__(params, lr, regularizer)
        self.momentum = check_range("SGD: momentum", momentum, 0.0)
        self.weight_decay = check_range("SGD: weight_decay", weight_decay, 0.0)
        self.dampening = float(dampening)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening == 0")

    def config(self) -> dict:
        return {**super().config(), "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay, "dampening": self.dampening}

    def _needed_buffers(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum else ()

    def _update(self, p: Parameter, state: dict[str, Array], index: int) -> None:
        xp = get_array_module(p.data)
        g = self._grad(p, index, self.weight_decay)
        work = self._scratch(p, index, 1)
        if self.momentum:
            buf = state["momentum_buffer"]
            if "momentum_buffer" in self._fresh[index]:
                buf[...] = g
            else:
                buf *= self.momentum
                xp.multiply(g, 1.0 - self.dampening, out=work)
                buf += work
            if self.nesterov:
                xp.multiply(buf, self.momentum, out=work)
                work += g
                g = work
            else:
                g = buf
        xp.multiply(g, self.lr, out=work)
        p.data -= work
