"""Temporarily switching a model to evaluation mode."""
from __future__ import annotations

import contextlib
from typing import Iterator

from ..layers.base import Layer, no_grad

__all__ = ["evaluating"]


def _all_layers(layer: Layer) -> Iterator[Layer]:
    yield layer
    for child in layer.children():
        yield from _all_layers(child)


@contextlib.contextmanager
def evaluating(model: Layer) -> Iterator[Layer]:
    """Put every layer of ``model`` in eval mode under :func:`~gpuconv.layers.no_grad`
    (no backward follows); on exit restore each layer's own ``training`` flag and
    drop the arrays cached for backward (``clear_cache``)."""
    flags = [(layer, layer.training) for layer in _all_layers(model)]
    model.eval()
    try:
        with no_grad():
            yield model
    finally:
        for layer, flag in flags:
            layer.training = flag
        model.clear_cache()
