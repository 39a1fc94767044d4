"""Elementwise activations and Softmax; any input shape, float32 or float64."""
from __future__ import annotations

from ..backend import Array, get_array_module
from ..ops.fused import relu_grad
from ..ops.special import gelu, gelu_grad, gelu_with_derivative
from .base import Layer, describe, is_grad_enabled


class _Activation(Layer):
    """Caches one array (input or output) and checks dy against it."""

    def __init__(self) -> None:
        super().__init__()
        self._cache = None

    def _check_x(self, x: Array):
        if not hasattr(x, "dtype") or x.dtype.kind != "f":
            raise TypeError(f"{self!r}: expected a floating-point array, got {describe(x)}")
        return get_array_module(x)

    def _cached(self, dy: Array) -> Array:
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        if tuple(dy.shape) != tuple(self._cache.shape):
            raise ValueError(f"{self!r}: backward expected dy of shape "
                             f"{tuple(self._cache.shape)}, got {tuple(dy.shape)}")
        return self._cache


class ReLU(_Activation):
    """max(x, 0)."""

    def forward(self, x: Array) -> Array:
        xp = self._check_x(x)
        y = xp.maximum(x, 0)
        self._cache = y
        return y

    def backward(self, dy: Array) -> Array:
        return relu_grad(dy, self._cached(dy))


class LeakyReLU(_Activation):
    """x if x > 0 else negative_slope * x."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    def config(self) -> dict:
        return {"negative_slope": self.negative_slope}

    def forward(self, x: Array) -> Array:
        xp = self._check_x(x)
        self._cache = x
        return xp.where(x > 0, x, x * self.negative_slope)

    def backward(self, dy: Array) -> Array:
        x = self._cached(dy)
        xp = get_array_module(dy)
        return xp.where(x > 0, dy, dy * self.negative_slope)


class Sigmoid(_Activation):
    """1 / (1 + exp(-x)), computed without overflow for large |x|."""

    def forward(self, x: Array) -> Array:
        xp = self._check_x(x)
        e = xp.exp(-xp.abs(x))
        y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
        self._cache = y
        return y

    def backward(self, dy: Array) -> Array:
        y = self._cached(dy)
        return dy * y * (1 - y)


class Tanh(_Activation):
    def forward(self, x: Array) -> Array:
        xp = self._check_x(x)
        y = xp.tanh(x)
        self._cache = y
        return y

    def backward(self, dy: Array) -> Array:
        y = self._cached(dy)
        return dy * (1 - y * y)


class Softmax(_Activation):
    """exp(x) / sum(exp(x)) along ``axis`` (max-shifted, so large logits are safe)."""

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        self.axis = int(axis)

    def config(self) -> dict:
        return {"axis": self.axis}

    def forward(self, x: Array) -> Array:
        xp = self._check_x(x)
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"{self!r}: axis {self.axis} is out of range for input shape {x.shape}")
        e = xp.exp(x - x.max(axis=self.axis, keepdims=True))
        y = e / e.sum(axis=self.axis, keepdims=True)
        self._cache = y
        return y

    def backward(self, dy: Array) -> Array:
        y = self._cached(dy)
        return y * (dy - (dy * y).sum(axis=self.axis, keepdims=True))


class GELU(_Activation):
    """Gaussian error linear unit, like ``torch.nn.GELU``; any input shape (typically
    (N, C, H, W) or (N, C)), float16/32/64; the output has x's shape and dtype.

    ``approximate="none"`` (default): ``x * Phi(x)``, Phi the standard normal CDF
    computed from an accurate erf (:mod:`gpuconv.ops.special`; float64 within
    4.5e-16 * max(|x|, 1) of the exact value, float32 within an ulp). ``"tanh"``: ``x/2 * (1 + tanh(sqrt(2/pi) (x +
    0.044715 x^3)))``. Backward is the exact derivative of the chosen form
    (``Phi(x) + x phi(x)`` for "none"). One array of x's size is kept for backward
    (nothing under :func:`gpuconv.no_grad`): for float32 off CUDA the derivative
    ``GELU'(x)``, computed in the same pass as the output (cheaper than recomputing
    it, and backward is one multiply), otherwise the input itself (no copy); forward
    and backward are each one fused kernel on CUDA.
    """

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self._cache_is_derivative = False

    def config(self) -> dict:
        return {"approximate": self.approximate}

    def forward(self, x: Array) -> Array:
        self._check_x(x)
        if not is_grad_enabled():
            self._cache = None
            return gelu(x, self.approximate)
        y, derivative = gelu_with_derivative(x, self.approximate)
        self._cache_is_derivative = derivative is not None
        self._cache = x if derivative is None else derivative
        return y

    def backward(self, dy: Array) -> Array:
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward() called before forward() (or after a "
                               f"forward under gpuconv.no_grad(), which keeps nothing)")
        saved = self._cached(dy)
        if self._cache_is_derivative:  # dx in the input's dtype, as gelu_grad returns it
            return get_array_module(dy, saved).multiply(dy, saved, dtype=saved.dtype)
        return gelu_grad(dy, saved, self.approximate)
