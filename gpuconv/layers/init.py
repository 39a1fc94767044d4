"""Weight initialisers (also importable as ``gpuconv.init``).

An initialiser is called as ``init(shape, fan_in, fan_out, xp, dtype)`` and
returns a new array drawn from the seeded generator of ``xp``
(``gpuconv.backend.generator``). Fans follow PyTorch: Dense ``fan_in =
in_features``; Conv ``fan_in = in_channels * kh * kw`` and ``fan_out =
out_channels * kh * kw``.

Layer defaults: Conv2D/Conv1D/Dense weights use :class:`HeNormal` (suited to
the ReLU networks gpuconv builds), biases :class:`Constant` (0).
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import Any

from ..backend import Array, generator

__all__ = ["Initializer", "Constant", "Uniform", "Normal", "XavierUniform", "XavierNormal",
           "HeUniform", "HeNormal", "FanInUniform", "Dirac", "INITIALIZERS", "get", "to_config"]


class Initializer:
    def __call__(self, shape: tuple[int, ...], fan_in: int, fan_out: int,
                 xp: ModuleType, dtype: Any) -> Array:
        raise NotImplementedError

    def config(self) -> dict:
        return {k: v for k, v in vars(self).items()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _uniform(shape, low: float, high: float, xp: ModuleType, dtype: Any) -> Array:
    u = generator(xp).random(shape, dtype=dtype)
    return u * (high - low) + low


def _normal(shape, std: float, xp: ModuleType, dtype: Any) -> Array:
    return generator(xp).standard_normal(shape, dtype=dtype) * std


class Constant(Initializer):
    def __init__(self, value: float = 0.0) -> None:
        self.value = float(value)

    def __call__(self, shape, fan_in, fan_out, xp, dtype):
        return xp.full(shape, self.value, dtype=dtype)


class Uniform(Initializer):
    def __init__(self, low: float = -0.05, high: float = 0.05) -> None:
        if not low < high:
            raise ValueError(f"Uniform: low must be < high, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)

    def __call__(self, shape, fan_in, fan_out, xp, dtype):
        return _uniform(shape, self.low, self.high, xp, dtype)


class Normal(Initializer):
    def __init__(self, std: float = 0.01) -> None:
        if std < 0:
            raise ValueError(f"Normal: std must be >= 0, got {std}")
        self.std = float(std)

    def __call__(self, shape, fan_in, fan_out, xp, dtype):
        return _normal(shape, self.std, xp, dtype)


class XavierUniform(Initializer):
    """U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""

    def __init__(self, gain: float = 1.0) -> None:
        self.gain = float(gain)

    def __call__(self, shape, fan_in, fan_out, xp, dtype):
        a = self.gain * math.sqrt(6.0 / (fan_in + fan_out))
        return _uniform(shape, -a, a, xp, dtype)


class XavierNormal(Initializer):
    """N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""

    def __init__(self, gain: float = 1.0) -> None:
        self.gain = float(gain)

    def __call__(self, shape, fan_in, fan_out, xp, dtype):
        return _normal(shape, self.gain * math.sqrt(2.0 / (fan_in + fan_out)), xp, dtype)


class HeUniform(Initializer):
    """U(-a, a), a = sqrt(6 / fan) with fan = fan_in (or fan_out) (He et al. 2015)."""

    def __init__(self, mode: str = "fan_in") -> None:
        if mode not in ("fan_in", "fan_out"):
            raise ValueError(f"HeUniform: mode must be 'fan_in' or 'fan_out', got {mode!r}")
        self.mode = mode

    def __call__(self, shape, fan_in, fan_out, xp, dtype):
        fan = fan_in if self.mode == "fan_in" else fan_out
        a = math.sqrt(6.0 / fan)
        return _uniform(shape, -a, a, xp, dtype)


class HeNormal(Initializer):
    """N(0, 2 / fan) with fan = fan_in (or fan_out)."""

    def __init__(self, mode: str = "fan_in") -> None:
        if mode not in ("fan_in", "fan_out"):
            raise ValueError(f"HeNormal: mode must be 'fan_in' or 'fan_out', got {mode!r}")
        self.mode = mode

    def __call__(self, shape, fan_in, fan_out, xp, dtype):
        fan = fan_in if self.mode == "fan_in" else fan_out
        return _normal(shape, math.sqrt(2.0 / fan), xp, dtype)


class FanInUniform(Initializer):
    """U(-a, a), a = scale / sqrt(fan_in): PyTorch's default for Conv and Linear
    weights (``kaiming_uniform_(a=sqrt(5))``) with ``scale=1``."""

    def __init__(self, scale: float = 1.0) -> None:
        if not scale >= 0:
            raise ValueError(f"FanInUniform: scale must be >= 0, got {scale}")
        self.scale = float(scale)

    def __call__(self, shape, fan_in, fan_out, xp, dtype):
        a = self.scale / math.sqrt(fan_in)
        return _uniform(shape, -a, a, xp, dtype)


class Dirac(Initializer):
    """Identity-preserving convolution weights: draw from ``base``, then make the
    first ``min(out, in)`` filters identities (filter ``i`` passes input channel
    ``i`` through its centre tap), like ``torch.nn.init.dirac_`` applied to the
    first ``in_channels`` filters as airbench does. For (O, I, *kernel) shapes."""

    def __init__(self, base: "Initializer | str | dict | None" = None) -> None:
        self.base = get(base, FanInUniform())

    def config(self) -> dict:
        return {"base": to_config(self.base)}

    def __call__(self, shape, fan_in, fan_out, xp, dtype):
        if len(shape) < 3:
            raise ValueError(f"Dirac: needs convolution weights (O, I, *kernel), got {shape}")
        w = self.base(shape, fan_in, fan_out, xp, dtype)
        n = min(shape[0], shape[1])
        centre = tuple(k // 2 for k in shape[2:])
        idx = xp.arange(n)
        w[:n] = 0
        w[(idx, idx) + centre] = 1
        return w


INITIALIZERS = {cls.__name__: cls for cls in
                (Constant, Uniform, Normal, XavierUniform, XavierNormal, HeUniform, HeNormal,
                 FanInUniform, Dirac)}


def get(spec: "Initializer | str | dict | None", default: Initializer) -> Initializer:
    """Resolve an initialiser given as an instance, a class name, a saved config or None."""
    if spec is None:
        return default
    if isinstance(spec, Initializer):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec}
    if isinstance(spec, dict):
        kind = spec.get("type")
        if kind not in INITIALIZERS:
            raise ValueError(f"unknown initializer {kind!r}; known: {sorted(INITIALIZERS)}")
        return INITIALIZERS[kind](**{k: v for k, v in spec.items() if k != "type"})
    raise TypeError(f"initializer must be an Initializer, a name or a dict, got {spec!r}")


def to_config(init: Initializer) -> dict:
    return {"type": type(init).__name__, **init.config()}
