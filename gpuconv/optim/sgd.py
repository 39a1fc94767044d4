"""Stochastic gradient descent with momentum / Nesterov, like ``torch.optim.SGD``.

Also :func:`airbench_sgd_hyperparameters`: airbench's "decoupled"
hyper-parameters (lr and weight decay per 1024 examples) as standard
Nesterov-SGD parameter groups.
"""
from __future__ import annotations

from typing import Any

from ..backend import Array, get_array_module
from ..layers.base import Parameter
from .base import Optimizer, check_range
from .regularizers import Regularizer

__all__ = ["SGD", "airbench_sgd_hyperparameters"]


class SGD(Optimizer):
    """SGD, per parameter with its group's hyper-parameters (torch's algorithm)::

        g = grad + weight_decay * p                       # L2 in the gradient
        buf = g                                 (first update of p)
        buf = momentum * buf + (1 - dampening) * g        (later updates)
        p -= lr * (g + momentum * buf if nesterov else buf)

    Without momentum: ``p -= lr * g``. State: ``momentum_buffer`` (like p) for
    parameters of groups with ``momentum > 0``; ``p.grad`` itself is left
    unchanged.

    Args:
        params: a model, Parameters, or a list of parameter-group dicts (keys:
            ``params`` and any of ``lr``, ``momentum``, ``dampening``,
            ``nesterov``, ``weight_decay``; see :mod:`.base`).
        lr: the groups' default lr; None (the default) requires an ``lr`` in
            every group, as in ``torch.optim.SGD(groups, momentum=..., nesterov=True)``.
        momentum, dampening, nesterov, weight_decay: group defaults. Nesterov
            needs ``momentum > 0`` and ``dampening == 0`` (checked per group).
        regularizer: see :class:`.Optimizer`.

    airbench's per-1024-examples lr and weight decay map onto these
    hyper-parameters with :func:`airbench_sgd_hyperparameters`.
    """

    def __init__(self, params: Any, lr: float | None = None, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, dampening: float = 0.0,
                 regularizer: Regularizer | None = None) -> None:
        super().__init__(params, lr, regularizer, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, dampening=dampening)

    def _validate(self, values: dict[str, Any], where: str,
                  lr_optional: bool = False) -> dict[str, Any]:
        out = super()._validate(values, where, lr_optional)
        name = f"SGD{where}"
        out["momentum"] = check_range(f"{name}: momentum", out["momentum"], 0.0)
        out["weight_decay"] = check_range(f"{name}: weight_decay", out["weight_decay"], 0.0)
        out["dampening"] = float(out["dampening"])
        out["nesterov"] = bool(out["nesterov"])
        if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ValueError(f"{name}: nesterov needs momentum > 0 and dampening == 0")
        return out

    def _needed_buffers(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] else ()

    def _update(self, p: Parameter, state: dict[str, Array], index: int,
                group: dict[str, Any]) -> None:
        xp = get_array_module(p.data)
        momentum = group["momentum"]
        g = self._grad(p, index, group["weight_decay"])
        work = self._scratch(p, index, 1)
        if momentum:
            buf = state["momentum_buffer"]
            if "momentum_buffer" in self._fresh[index]:
                buf[...] = g
            else:
                buf *= momentum
                xp.multiply(g, 1.0 - group["dampening"], out=work)
                buf += work
            if group["nesterov"]:
                xp.multiply(buf, momentum, out=work)
                work += g
                g = work
            else:
                g = buf
        xp.multiply(g, group["lr"], out=work)
        p.data -= work


def airbench_sgd_hyperparameters(batch_size: int, lr: float = 11.5,
                                 weight_decay: float = 0.0153, momentum: float = 0.85,
                                 bias_scaler: float = 64.0) -> dict[str, Any]:
    """airbench94's decoupled hyper-parameters as standard Nesterov-SGD values.

    airbench expresses lr and weight decay "per 1024 examples", decoupled
    from the momentum and from each other. Formulas, as in Keller Jordan's
    ``airbench94.py`` (github.com/KellerJordan/cifar10-airbench, ``main()``,
    "Train and Eval" section, where they feed ``torch.optim.SGD``)::

        kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
        lr_sgd      = lr / kilostep_scale                  # "un-decoupled learning rate"
        wd          = weight_decay * batch_size / kilostep_scale
        lr_biases   = lr_sgd * bias_scaler
        groups: BatchNorm biases: lr = lr_biases, weight_decay = wd / lr_biases
                everything else:  lr = lr_sgd,    weight_decay = wd / lr_sgd

    Why (airbench's comments): with time-constant gradients, Nesterov SGD's
    step is ``1 + 1 / (1 - momentum)`` times the gradient, so dividing by it
    makes the step size independent of the momentum; the loss is **summed**
    over the batch (``CrossEntropyLoss(reduction='none')(...).sum()``), so the
    per-step gradient grows with the batch and the lr is per 1024 examples.
    Weight decay enters torch's SGD as ``weight_decay * p`` added to the
    gradient, i.e. a decay of ``lr * weight_decay * p`` per step: dividing
    ``wd`` by each group's lr makes that decay ``wd`` (proportional to the
    batch size, i.e. per example) in both groups -- ``bias_scaler`` scales
    the lr but not the decay. (A scheduler then scales lr and decay together,
    as in airbench, since the group's ``weight_decay`` stays fixed.)

    Args:
        batch_size: examples per step (airbench94: 1024).
        lr: learning rate per 1024 examples (airbench94: 11.5).
        weight_decay: weight decay per 1024 examples (airbench94: 0.0153).
        momentum: Nesterov momentum (airbench94: 0.85).
        bias_scaler: lr multiplier of BatchNorm biases (airbench94: 64.0).

    Returns:
        ``{"momentum", "nesterov": True, "lr", "weight_decay", "bias_lr",
        "bias_weight_decay"}`` (python floats), for
        ``SGD([{"params": bn_biases, "lr": h["bias_lr"], "weight_decay":
        h["bias_weight_decay"]}, {"params": others, "lr": h["lr"],
        "weight_decay": h["weight_decay"]}], momentum=h["momentum"], nesterov=True)``,
        used with a loss whose ``reduction="sum"``.
    """
    if int(batch_size) < 1:
        raise ValueError(f"airbench_sgd_hyperparameters: batch_size must be >= 1, "
                         f"got {batch_size}")
    momentum = float(momentum)
    if not 0.0 < momentum < 1.0:
        raise ValueError(f"airbench_sgd_hyperparameters: momentum must be in (0, 1) "
                         f"(Nesterov), got {momentum}")
    if lr <= 0 or bias_scaler <= 0 or weight_decay < 0:
        raise ValueError("airbench_sgd_hyperparameters: lr and bias_scaler must be > 0 and "
                         "weight_decay >= 0")
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr_sgd = float(lr) / kilostep_scale
    wd = float(weight_decay) * int(batch_size) / kilostep_scale
    lr_biases = lr_sgd * float(bias_scaler)
    return {"momentum": momentum, "nesterov": True, "lr": lr_sgd, "weight_decay": wd / lr_sgd,
            "bias_lr": lr_biases, "bias_weight_decay": wd / lr_biases}
