"""Sequential: a chain of layers that is itself a layer."""
from __future__ import annotations

from typing import Iterable, Iterator

from ..backend import Array
from ..layers.base import Layer


class Sequential(Layer):
    """Applies layers in order; ``backward`` runs them in reverse.

    Parameters are named ``"<index>.<name>"`` (``"0.weight"``), like PyTorch.
    """

    def __init__(self, layers: Iterable[Layer] = ()) -> None:
        super().__init__()
        self.layers: list[Layer] = []
        for layer in layers:
            self.add(layer)

    def add(self, layer: Layer) -> "Sequential":
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add: expected a Layer, got {type(layer).__name__}")
        layer.train(self.training)
        self.layers.append(layer)
        return self

    def children(self) -> list[Layer]:
        return self.layers

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Layer:
        return self.layers[index]

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def forward(self, x: Array) -> Array:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy: Array, need_input_grad: bool = True) -> Array | None:
        """Backpropagate ``dy``; returns the input gradient, or None when
        ``need_input_grad`` is False. Then nothing below the first layer with a trainable
        parameter runs at all (no gradient there is used: airbench's frozen whitening
        conv and its GELU, once the whitening bias is frozen too), and that layer skips
        its own input gradient (:meth:`Layer.backward_params`)."""
        if not self.layers:
            return dy if need_input_grad else None
        first = 0 if need_input_grad else self._first_trainable()
        if first is None:  # nothing trainable: no gradient is needed anywhere
            return None
        for layer in reversed(self.layers[first + 1:]):
            dy = layer.backward(dy)
        if need_input_grad:
            return self.layers[0].backward(dy)
        self.layers[first].backward_params(dy)
        return None

    def _first_trainable(self) -> int | None:
        """Index of the first layer with a parameter that requires a gradient (None: none)."""
        for i, layer in enumerate(self.layers):
            if any(p.requires_grad for p in layer.parameters()):
                return i
        return None

    def backward_params(self, dy: Array) -> None:
        self.backward(dy, need_input_grad=False)

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"
