"""Define a new layer: a Layer subclass with forward/backward, checked against
finite differences, then trained inside a Sequential.

    python examples/custom_layer.py

The rules (see gpuconv/layers/base.py): ``forward(x)`` returns y and caches what
backward needs; ``backward(dy)`` returns dx and *adds* into each parameter's
``.grad``; learnable arrays are :class:`gpuconv.layers.Parameter` attributes; every
new array is made with the ``xp`` (NumPy or CuPy) of the inputs, so the layer runs
on both devices. (``model.save`` only stores built-in layer types.)
"""
import os

import numpy

import gpuconv
from gpuconv.backend import get_array_module, to_numpy
from gpuconv.layers import Conv2D, Dense, Flatten, Layer, Parameter, ReLU
from gpuconv.training.loop import ArrayBatches


class ChannelScale(Layer):
    """y = x * scale[c] + shift[c] for x (N, C, H, W): a learnable per-channel affine map."""

    def __init__(self, channels: int, dtype="float32") -> None:
        super().__init__()
        self.channels = channels
        self.scale = Parameter(numpy.ones(channels, dtype=dtype), "scale")
        self.shift = Parameter(numpy.zeros(channels, dtype=dtype), "shift")
        self._cache = None

    def config(self) -> dict:
        return {"channels": self.channels}

    def forward(self, x):
        self._check_input(x, 4, self.channels, "(N, C, H, W)")  # device/dtype/shape checks
        self._cache = x
        return x * self.scale.data[:, None, None] + self.shift.data[:, None, None]

    def backward(self, dy):
        x = self._cache
        self.scale.grad += (dy * x).sum(axis=(0, 2, 3))
        self.shift.grad += dy.sum(axis=(0, 2, 3))
        return dy * self.scale.data[:, None, None]


def gradient_check(layer: Layer, x: numpy.ndarray, eps: float = 1e-6) -> float:
    """Largest relative error between backward() and central differences of
    L = sum(forward(x) * r) for the input and every parameter (float64)."""
    xp = get_array_module(x)
    r = numpy.random.default_rng(1).standard_normal(layer.forward(x).shape)
    layer.zero_grad()
    dx = layer.backward(xp.asarray(r))
    worst = 0.0

    def loss() -> float:
        return float((to_numpy(layer.forward(x)) * r).sum())

    for array, grad in [(x, dx)] + [(p.data, p.grad) for p in layer.parameters()]:
        numeric = numpy.zeros(array.shape)
        for i in numpy.ndindex(array.shape):
            old = float(array[i])
            array[i] = old + eps
            plus = loss()
            array[i] = old - eps
            minus = loss()
            array[i] = old
            numeric[i] = (plus - minus) / (2 * eps)
        err = numpy.abs(numeric - to_numpy(grad)).max() / max(numpy.abs(numeric).max(), 1e-12)
        worst = max(worst, err)
    return worst


if __name__ == "__main__":
    gpuconv.seed(0)
    rng = numpy.random.default_rng(0)
    check = ChannelScale(3, dtype="float64")
    check.scale.data[:] = rng.uniform(0.5, 1.5, 3)
    error = gradient_check(check, rng.standard_normal((2, 3, 4, 5)))
    print(f"gradient check: max relative error {error:.2e}")
    assert error < 1e-6, "backward() disagrees with finite differences"

    # Use it like any other layer: learn to tell bright from dark 8x8 images.
    n = int(os.environ.get("GPUCONV_EXAMPLE_SAMPLES", "512"))
    labels = rng.integers(0, 2, n)
    images = (rng.standard_normal((n, 3, 8, 8)) + (2 * labels - 1)[:, None, None, None])
    data = ArrayBatches(images.astype(numpy.float32), labels, batch_size=64, shuffle=True)
    model = gpuconv.Sequential([ChannelScale(3), Conv2D(3, 8, 3, padding=1), ReLU(),
                                Flatten(), Dense(8 * 8 * 8, 2)])
    optimizer = gpuconv.optim.Adam(model, lr=1e-2)
    history = model.fit(data, 3, optimizer, gpuconv.losses.SoftmaxCrossEntropy(), verbose=0)
    accuracy = history.records[-1]["accuracy"]
    print(f"trained a model with ChannelScale: accuracy {accuracy:.3f}, "
          f"learned scale {to_numpy(model[0].scale.data).round(3)}")
    assert accuracy > 0.9
