"""Parameter lists and the frozen-parameter rule shared by optimizers, regularizers and clipping.

A parameter is *frozen* when its ``requires_grad`` attribute is False
(``Layer.freeze()`` sets it). :class:`~gpuconv.layers.Parameter` objects
without the attribute count as trainable, so this rule works whether or not a
given Parameter class has the attribute. Frozen parameters are skipped by
every optimizer step (no update, no state created), by regularizers (no
penalty, no gradient) and by gradient clipping (not in the norm, not scaled),
as torch skips parameters whose ``.grad`` is None.
"""
from __future__ import annotations

from typing import Any

from ..layers.base import Parameter

__all__ = ["as_parameter_list", "is_trainable", "trainable"]


def is_trainable(p: Parameter) -> bool:
    """False when ``p.requires_grad`` is False (a frozen parameter), else True."""
    return bool(getattr(p, "requires_grad", True))


def as_parameter_list(params: Any) -> list[Parameter]:
    """Normalise ``params``: a layer/model (anything with ``.parameters()``), a single
    :class:`Parameter`, or an iterable of Parameters. Raises TypeError for anything else
    and ValueError for a parameter listed twice."""
    if isinstance(params, Parameter):
        params = [params]
    elif hasattr(params, "parameters") and callable(params.parameters):
        params = params.parameters()
    plist = list(params)
    for p in plist:
        if not isinstance(p, Parameter):
            raise TypeError(f"optimizer: expected gpuconv Parameters, got {type(p).__name__}")
    if len({id(p) for p in plist}) != len(plist):
        raise ValueError("optimizer: a parameter appears more than once")
    return plist


def trainable(params: Any) -> list[Parameter]:
    """The trainable (not frozen) parameters of ``params`` (see :func:`as_parameter_list`)."""
    return [p for p in as_parameter_list(params) if is_trainable(p)]
