"""Weight penalties: L1, L2 and ElasticNet.

A regularizer has ``penalty(params)`` (a 0-d array on the parameters'
device: add it to the reported loss) and ``apply(params)`` (adds the
penalty's gradient into each selected ``p.grad`` in place). Pass one to an
optimizer (``SGD(..., regularizer=L2(1e-4))``) and it calls ``apply`` at the
start of every ``step()``; neither method synchronises host and device.

Which parameters are penalised (``include``):

- ``"weights"`` (default): parameters named ``"weight"`` with at least two
  dimensions, i.e. Dense and Conv kernels. Biases and BatchNorm's scale
  (also named ``"weight"``, but 1-D) are left alone.
- ``"all"``: every parameter.
- a callable ``include(p) -> bool`` on each :class:`Parameter`.

Frozen parameters (``requires_grad`` False, see :mod:`.params`) are never
selected: they add nothing to the penalty and get no gradient.

Definitions (``w`` runs over the selected parameters' elements):

- ``L1(lam)``: ``lam * sum|w|``; gradient ``lam * sign(w)`` (0 at w == 0).
- ``L2(lam)``: ``lam / 2 * sum w^2``; gradient ``lam * w`` -- so ``L2(lam)``
  on all parameters equals SGD's ``weight_decay=lam``.
- ``ElasticNet(l1, l2)``: ``L1(l1) + L2(l2)``.
"""
from __future__ import annotations

from typing import Any, Callable, Union

from ..backend import Array, device_context_of, get_array_module
from ..layers.base import Parameter
from .params import is_trainable

__all__ = ["Regularizer", "L1", "L2", "ElasticNet", "Include"]

Include = Union[str, Callable[[Parameter], bool]]


def _is_weight(p: Parameter) -> bool:
    return p.name == "weight" and p.data.ndim >= 2


class Regularizer:
    """Base class: ``l1 * sum|w| + l2 / 2 * sum w^2`` over the selected parameters."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0, include: Include = "weights") -> None:
        if l1 < 0 or l2 < 0:
            raise ValueError(f"{type(self).__name__}: coefficients must be >= 0, got l1={l1}, l2={l2}")
        self.l1 = float(l1)
        self.l2 = float(l2)
        if include == "weights":
            self._select: Callable[[Parameter], bool] = _is_weight
        elif include == "all":
            self._select = lambda p: True
        elif callable(include):
            self._select = include
        else:
            raise ValueError(f"{type(self).__name__}: include must be 'weights', 'all' or a "
                             f"callable, got {include!r}")
        self.include = include

    def config(self) -> dict:
        include = self.include if isinstance(self.include, str) else "custom"
        return {"type": type(self).__name__, "l1": self.l1, "l2": self.l2, "include": include}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(l1={self.l1}, l2={self.l2}, include={self.include!r})"

    def selected(self, params: Any) -> list[Parameter]:
        """The trainable parameters this regularizer acts on (``params``: list or model)."""
        if hasattr(params, "parameters") and callable(params.parameters):
            params = params.parameters()
        return [p for p in params if is_trainable(p) and self._select(p)]

    def penalty(self, params: Any) -> Array:
        """The penalty as a 0-d array on the parameters' device (dtype of the first one)."""
        chosen = self.selected(params)
        if not chosen:
            return get_array_module().zeros((), dtype="float64")
        xp = get_array_module(*(p.data for p in chosen))
        dtype = chosen[0].data.dtype
        with device_context_of(chosen[0].data):
            total = xp.zeros((), dtype=dtype)
            for p in chosen:
                flat = p.data.reshape(-1)
                if self.l1:
                    total += self.l1 * xp.abs(flat).sum()
                if self.l2:
                    total += (0.5 * self.l2) * xp.dot(flat, flat)
        return total

    def apply(self, params: Any) -> None:
        """Add the penalty's gradient into ``p.grad`` of each selected parameter (in place)."""
        for p in self.selected(params):
            xp = get_array_module(p.data, p.grad)
            with device_context_of(p.data):
                if self.l1:
                    p.grad += self.l1 * xp.sign(p.data)
                if self.l2:
                    p.grad += self.l2 * p.data


class L1(Regularizer):
    """``lam * sum|w|`` over the selected parameters."""

    def __init__(self, lam: float, include: Include = "weights") -> None:
        super().__init__(l1=lam, include=include)


class L2(Regularizer):
    """``lam / 2 * sum w^2`` over the selected parameters (gradient ``lam * w``)."""

    def __init__(self, lam: float, include: Include = "weights") -> None:
        super().__init__(l2=lam, include=include)


class ElasticNet(Regularizer):
    """``l1 * sum|w| + l2 / 2 * sum w^2`` over the selected parameters."""

    def __init__(self, l1: float = 1e-4, l2: float = 1e-4, include: Include = "weights") -> None:
        super().__init__(l1=l1, l2=l2, include=include)
