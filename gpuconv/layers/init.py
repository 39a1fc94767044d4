"""Weight initialisers (also importable as ``gpuconv.init``).

An initialiser is called as ``init(shape, fan_in, fan_out, xp, dtype)`` and
returns a new array drawn from the seeded generator of ``xp``
(``gpuconv.backend.generator``). Fans follow PyTorch: Dense ``fan_in =
in_features``; Conv ``fan_in = in_channels * kh * kw`` and ``fan_out =
out_channels * kh * kw``.

Layer defaults: Conv2D/Conv1D/Dense weights use :class:`HeNormal` (suited to
the ReLU networks gpuconv builds), biases :class:`Constant` (0).

:func:`patch_whitening` is different: it computes a conv weight from data
(airbench's whitening layer) and is assigned to ``layer.weight.data``.
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy

from ..backend import Array, generator, get_array_module, on_array_device
from ..ops.im2col import im2col

__all__ = ["Initializer", "Constant", "Uniform", "Normal", "XavierUniform", "XavierNormal",
           "HeUniform", "HeNormal", "FanInUniform", "Dirac", "INITIALIZERS", "get", "to_config",
           "patch_whitening"]


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


_PATCHES_PER_CHUNK = 1 << 22  # float64 column elements per chunk of images (32 MiB)


@on_array_device
def patch_whitening(images: Array, patch_size: int = 2, eps: float = 5e-4,
                    max_images: int = 5000, seed: int | None = 0) -> Array:
    """A whitening conv weight (2*D, C, p, p), D = C*p*p, computed from ``images``.

    ``images``: (N, C, H, W) float array (NumPy or CuPy; the computation runs on its
    device with its ``xp``), normally already normalised per channel, as airbench
    does (its whitening runs on normalised training images). Up to ``max_images``
    of them are used: all when N <= max_images, else a random subset without
    replacement drawn by ``numpy.random.default_rng(seed)`` (kept in input order;
    the same ``seed`` gives the same subset and weight). ``seed=None`` takes the
    first ``max_images`` images instead (airbench: ``images[:5000]``).

    Method (airbench94's ``init_whitening_conv``): every p x p patch (stride 1, no
    padding) flattened in (C, p, p) order -- the order of a conv weight row -- gives
    the *uncentred* second-moment matrix ``S = X^T X / n_patches`` (D, D), as
    airbench computes it (no mean subtracted: on normalised images the patch mean
    is near 0, and the conv then whitens exactly what it sees, bias-free). In
    float64: ``S = V diag(lam) V^T`` (``xp.linalg.eigh``, eigenvalues clipped at 0),
    ``W_i = V[:, i] / sqrt(lam_i + eps)`` with eigenvalues in *descending* order,
    each eigenvector's sign fixed so its largest-magnitude entry is positive
    (deterministic across backends). Returns ``concatenate([W, -W])`` reshaped to
    (2*D, C, p, p): a Conv2D(C, 2*D, p, padding=0) with this weight maps patches
    to coordinates with second moments ``lam_i / (lam_i + eps)`` (about 1 where
    ``lam_i >> eps``), followed by their negatives (so a GELU after it keeps both
    signs). dtype: the images' (float32 or float64; float16 images give float32).
    """
    xp = get_array_module(images)
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4 or images.dtype.kind != "f":
        raise ValueError(f"patch_whitening: images must be a floating (N, C, H, W) array, "
                         f"got {type(images).__name__} shape={shape} "
                         f"dtype={getattr(images, 'dtype', None)}")
    n, c, h, w = (int(v) for v in shape)
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1 \
            or patch_size > min(h, w):
        raise ValueError(f"patch_whitening: patch_size must be an int in [1, min(H, W) = "
                         f"{min(h, w)}], got {patch_size!r}")
    if not (isinstance(eps, (int, float)) and eps > 0 and math.isfinite(eps)):
        raise ValueError(f"patch_whitening: eps must be a finite number > 0, got {eps!r}")
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise ValueError(f"patch_whitening: max_images must be an int >= 1, got {max_images!r}")
    if n < 1:
        raise ValueError("patch_whitening: images is empty (N = 0)")
    if n <= max_images:
        chosen = numpy.arange(n)
    elif seed is None:
        chosen = numpy.arange(max_images)
    else:
        chosen = numpy.sort(numpy.random.default_rng(seed).choice(n, max_images, replace=False))
    p = patch_size
    dim = c * p * p
    oh, ow = h - p + 1, w - p + 1
    per_chunk = max(1, _PATCHES_PER_CHUNK // (dim * oh * ow))
    moments = xp.zeros((dim, dim), dtype=xp.float64)
    for start in range(0, len(chosen), per_chunk):
        part = chosen[start:start + per_chunk]
        if len(part) == part[-1] - part[0] + 1:  # a contiguous run: a view, no gather
            batch = images[int(part[0]):int(part[-1]) + 1]
        else:
            batch = images[xp.asarray(part)]
        cols = im2col(batch.astype(xp.float64), (p, p), (1, 1), (0, 0, 0, 0), (1, 1))
        cols = cols.reshape(dim, -1)  # (C*p*p, patches), rows in weight order
        moments += cols @ cols.T
    moments /= len(chosen) * oh * ow
    moments = (moments + moments.T) * 0.5  # exactly symmetric for eigh
    eigenvalues, eigenvectors = xp.linalg.eigh(moments)
    eigenvalues = xp.maximum(eigenvalues[::-1], 0.0)   # descending
    vectors = eigenvectors[:, ::-1]                      # column i <-> eigenvalues[i]
    largest = xp.argmax(xp.abs(vectors), axis=0)
    signs = xp.sign(vectors[largest, xp.arange(dim)])
    filters = (vectors * signs).T / xp.sqrt(eigenvalues + eps)[:, None]
    weight = xp.concatenate([filters, -filters]).reshape(2 * dim, c, p, p)
    dtype = images.dtype if images.dtype in (numpy.float32, numpy.float64) else numpy.float32
    return xp.ascontiguousarray(weight.astype(dtype))
