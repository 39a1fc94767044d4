"""Keras-style model summary: layer, output shape and parameter count per layer."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy

from ..backend import get_device
from ..containers.sequential import Sequential
from ..layers.base import Layer
from .modes import evaluating

__all__ = ["summary", "count_parameters"]


def count_parameters(layer: Layer) -> tuple[int, int]:
    """(trainable, non-trainable) element counts: parameters, and buffers such as
    BatchNorm running statistics."""
    trainable = sum(int(numpy.prod(p.shape)) for p in layer.parameters())
    frozen = sum(int(numpy.prod(b.shape)) for _, b in layer.named_buffers())
    return trainable, frozen


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(["None"] + [str(int(d)) for d in shape[1:]]) + ")"


def summary(model: Sequential, input_shape: Sequence[int],
            print_fn: Callable[[str], None] | None = print) -> str:
    """Print and return a table of the model's layers.

    ``input_shape``: one sample's shape without the batch axis, e.g.
    ``(1, 28, 28)``. The output shapes come from running ``forward`` on a zero
    batch of shape ``(1, *input_shape)`` with the model's dtype, on the model's
    device, in eval mode; every layer's mode is restored and caches are cleared
    afterwards. ``Param #`` counts parameters and buffers of each top-level
    layer; the totals split trainable (parameters) and non-trainable (buffers).
    ``print_fn=None`` only returns the text.
    """
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"summary: input_shape must be positive sizes without the batch "
                         f"axis, e.g. (1, 28, 28); got {tuple(input_shape)}")
    device = model.device or get_device("cpu")
    dtype = model.dtype or numpy.dtype("float32")
    rows = []
    with device.context(), evaluating(model):
        x = device.xp.zeros((1,) + shape, dtype=dtype)
        for i, layer in enumerate(model):
            try:
                x = layer.forward(x)
            except Exception as exc:
                raise ValueError(f"summary: layer {i} ({layer.name}) failed on input shape "
                                 f"{_shape(x.shape)}: {exc}") from exc
            trainable, frozen = count_parameters(layer)
            rows.append((f"{i}", layer.name, _shape(x.shape), f"{trainable + frozen:,}"))
    trainable, frozen = count_parameters(model)

    header = ("#", "Layer (type)", "Output Shape", "Param #")
    widths = [max(len(r[c]) for r in rows + [header]) for c in range(4)]
    widths[1], widths[2] = max(widths[1], 20), max(widths[2], 22)
    fmt = "  ".join(["{:>%d}" % widths[0], "{:<%d}" % widths[1], "{:<%d}" % widths[2],
                     "{:>%d}" % widths[3]])
    width = len(fmt.format(*header))
    lines = [f"Model: {type(model).__name__}  input {_shape((1,) + shape)} "
             f"{numpy.dtype(dtype).name} on {device}",
             "_" * width, fmt.format(*header), "=" * width]
    lines += [fmt.format(*r) for r in rows]
    lines += ["=" * width,
              f"Total params: {trainable + frozen:,}",
              f"Trainable params: {trainable:,}",
              f"Non-trainable params: {frozen:,}",
              "_" * width]
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text
