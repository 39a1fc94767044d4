"""``sync_batchnorm(model, comm)``: turn every BatchNorm of a model into a SyncBatchNorm."""
from __future__ import annotations

from typing import Any

from ..layers.base import Layer
from ..layers.normalization import BatchNorm1d, BatchNorm2d
from ..layers.sync_batchnorm import SyncBatchNorm1d, SyncBatchNorm2d

__all__ = ["sync_batchnorm", "bind_sync_batchnorm"]

_SYNC = {BatchNorm1d: SyncBatchNorm1d, BatchNorm2d: SyncBatchNorm2d}


def _convert(layer: Layer, comm: Any) -> Layer:
    cls = _SYNC.get(type(layer))
    if cls is None:
        return layer
    new = cls.__new__(cls)
    new.__dict__.update(layer.__dict__)  # the same parameters, running statistics, mode
    new.comm = comm
    new._cache_sync = None
    return new


def sync_batchnorm(model: Layer, comm: Any) -> Layer:
    """Replace, in place, every ``BatchNorm1d``/``BatchNorm2d`` inside ``model``
    (at any depth: Sequential, Residual) by a SyncBatchNorm sharing its
    parameters and running statistics, bound to ``comm``; returns ``model``
    (or the converted layer when ``model`` is itself a BatchNorm).

    Layers hold their sub-layers in list attributes (``Sequential.layers``,
    ``Residual.body`` / ``shortcut``); those lists are edited in place."""
    if type(model) in _SYNC:
        return _convert(model, comm)
    for value in vars(model).values():
        if isinstance(value, list):
            for i, child in enumerate(value):
                if isinstance(child, Layer):
                    value[i] = sync_batchnorm(child, comm)
    return model


def bind_sync_batchnorm(model: Layer, comm: Any) -> int:
    """Give every SyncBatchNorm in ``model`` without a communicator ``comm``;
    returns how many SyncBatchNorm layers the model has."""
    found = 0
    stack = [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, (SyncBatchNorm1d, SyncBatchNorm2d)):
            found += 1
            if layer.comm is None:
                layer.comm = comm
        stack.extend(layer.children())
    return found
