"""Batch augmentations that run on the device the batch lives on.

Every augmentation takes a floating-point batch ``x`` of shape ``(N, C, H, W)``
(NumPy on the CPU, CuPy on a GPU), draws its random numbers from the seeded
generator of that device (:func:`gpuconv.backend.generator`), treats all N
images at once (no Python loop over images) and returns a new array of the
same dtype; ``x`` is never modified. Results are reproducible after
``gpuconv.seed(s)``.

Pixel range: :class:`~gpuconv.data.loader.DataLoader` applies ``augment`` to
pixels scaled to [0, 1] (uint8 / 255), *before* per-channel normalisation.
:class:`ColorJitter` relies on that (it clips to [0, 1], as torchvision does
for float images) and ``fill`` values of :class:`RandomCrop`,
:class:`Cutout` and :class:`RandomRotation` are in those units (0 = black).

Each class has ``config()`` returning a JSON-able dict; :func:`from_config`
rebuilds the augmentation from it.
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import Any, Sequence

from ..backend import device_of, generator, get_array_module, on_array_device

__all__ = [
    "Augmentation", "Compose", "RandomCrop", "RandomHorizontalFlip", "Cutout", "ColorJitter",
    "RandomRotation", "RandomTranslate", "Normalize", "from_config", "pad_images",
    "crop_and_flip", "adjust_brightness", "adjust_contrast",
    "adjust_saturation", "rgb_to_grayscale",
]

Array = Any

_REGISTRY: dict[str, type] = {}


def _check(x: Array, who: str) -> ModuleType:
    xp = get_array_module(x)
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{who}: expected a batch of shape (N, C, H, W), got "
                         f"shape {getattr(x, 'shape', None)}")
    if x.dtype.kind != "f":
        raise TypeError(f"{who}: expected a floating-point batch (pixels in [0, 1]), got "
                        f"{x.dtype}; convert uint8 images with x.astype(float32) / 255 first")
    return xp


def _uniform(xp: ModuleType, n: int, lo: float, hi: float) -> Array:
    """``n`` float32 draws from U[lo, hi) on the device of ``xp``."""
    return generator(xp).random(n, dtype=xp.float32) * (hi - lo) + lo


def _pair(value: "int | Sequence[int]", who: str, what: str) -> tuple[int, int]:
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return int(value), int(value)
    try:
        a, b = value  # type: ignore[misc]
        return int(a), int(b)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: {what} must be an int or a pair of ints, got {value!r}") from None


def _fill_array(xp: ModuleType, fill: "float | Sequence[float]", c: int, dtype: Any,
                who: str) -> Array:
    """``fill`` as a (1, C, 1, 1) array on the device (a scalar broadcast to all channels)."""
    values = [float(fill)] * c if isinstance(fill, (int, float)) else [float(v) for v in fill]
    if len(values) != c:
        raise ValueError(f"{who}: fill has {len(values)} values for {c} channels")
    return xp.asarray(values, dtype=dtype).reshape(1, c, 1, 1)


def _flat_index(xp: ModuleType, shape: tuple, pix: Array) -> Array:
    """int64 ``(N, C, H, W)`` indices into ``src.reshape(-1)`` of a C-contiguous
    ``src`` of ``shape`` (N, C, Hs, Ws) picking pixel ``pix[n, i, j]`` (a flat
    index within one Hs x Ws plane, int64 ``(N, H, W)``) of every channel.
    A flat ``take`` with it is far faster on NumPy than four index arrays."""
    n, c, hs, ws = shape
    plane = hs * ws
    base = (xp.arange(n, dtype=xp.int64) * (c * plane))[:, None, None, None] + \
        (xp.arange(c, dtype=xp.int64) * plane)[None, :, None, None]
    return base + pix[:, None]


class Augmentation:
    """Base class: ``__call__(x) -> new array`` and ``config() -> dict``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls
        call = cls.__dict__.get("__call__")
        if call is not None:  # run on the batch's device (CuPy allocates on the current one)
            cls.__call__ = on_array_device(call)

    def __call__(self, x: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def _params(self) -> dict:
        return {}

    def config(self) -> dict:
        """``{"name": class name, **constructor arguments}`` (JSON-able)."""
        return {"name": type(self).__name__, **self._params()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"


def from_config(config: dict) -> Augmentation:
    """Rebuild an augmentation (or a :class:`Compose` of them) from ``config()``."""
    config = dict(config)
    name = config.pop("name", None)
    cls = _REGISTRY.get(name)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown augmentation {name!r}; known: {sorted(_REGISTRY)}")
    if cls is Compose:
        return Compose([from_config(c) for c in config["transforms"]])
    return cls(**config)


class Compose(Augmentation):
    """Apply ``transforms`` in order: ``Compose([RandomCrop(32, 4), RandomHorizontalFlip()])``."""

    def __init__(self, transforms: Sequence[Augmentation]) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: {t!r} is not callable")

    def __call__(self, x: Array) -> Array:
        _check(x, "Compose")
        if not self.transforms:
            return x.copy()
        for t in self.transforms:
            x = t(x)
        return x

    def config(self) -> dict:
        return {"name": "Compose",
                "transforms": [t.config() if hasattr(t, "config") else repr(t)
                               for t in self.transforms]}

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomCrop(Augmentation):
    """Pad each side by ``padding`` pixels of ``fill``, then cut a ``size`` crop at a
    random offset per image (uniform over all offsets that fit).

    Input ``(N, C, H, W)`` float; output ``(N, C, size_h, size_w)``, same dtype.
    """

    def __init__(self, size: "int | Sequence[int]" = 32, padding: int = 4,
                 fill: "float | Sequence[float]" = 0.0) -> None:
        self.size = _pair(size, "RandomCrop", "size")
        self.padding = int(padding)
        self.fill = fill if isinstance(fill, (int, float)) else [float(v) for v in fill]
        if min(self.size) <= 0 or self.padding < 0:
            raise ValueError(f"RandomCrop: size must be positive and padding >= 0, got "
                             f"size={size!r}, padding={padding!r}")

    def _params(self) -> dict:
        return {"size": list(self.size), "padding": self.padding, "fill": self.fill}

    def __call__(self, x: Array) -> Array:
        xp = _check(x, "RandomCrop")
        n, c, h, w = x.shape
        p = self.padding
        hp, wp = h + 2 * p, w + 2 * p
        th, tw = self.size
        if th > hp or tw > wp:
            raise ValueError(f"RandomCrop: crop {th}x{tw} is larger than the padded "
                             f"image {hp}x{wp}")
        if p:
            padded = xp.empty((n, c, hp, wp), dtype=x.dtype)
            padded[...] = _fill_array(xp, self.fill, c, x.dtype, "RandomCrop")
            padded[:, :, p:p + h, p:p + w] = x
        else:
            padded = x
        gen = generator(xp)
        oy = gen.integers(0, hp - th + 1, size=n, dtype=xp.int64)
        ox = gen.integers(0, wp - tw + 1, size=n, dtype=xp.int64)
        rows = oy[:, None] + xp.arange(th, dtype=xp.int64)  # (N, th)
        cols = ox[:, None] + xp.arange(tw, dtype=xp.int64)  # (N, tw)
        pix = rows[:, :, None] * wp + cols[:, None, :]  # (N, th, tw) flat pixel index
        padded = xp.ascontiguousarray(padded)
        return xp.take(padded.reshape(-1), _flat_index(xp, padded.shape, pix))


PAD_MODES = ("reflect", "constant", "edge")


@on_array_device
def pad_images(x: Array, pad: int, mode: str = "reflect", fill: float = 0.0) -> Array:
    """``x`` (N, C, H, W) padded by ``pad`` pixels on each side of H and W:
    ``"reflect"`` mirrors without repeating the edge (PyTorch's ``F.pad(...,
    "reflect")``, NumPy's ``"reflect"``), ``"edge"`` repeats it, ``"constant"``
    fills ``fill``. Returns a new C-contiguous (N, C, H + 2 pad, W + 2 pad) array."""
    xp = get_array_module(x)
    if mode not in PAD_MODES:
        raise ValueError(f"pad_images: mode must be one of {PAD_MODES}, got {mode!r}")
    if pad < 0 or (mode == "reflect" and pad >= min(x.shape[2], x.shape[3])):
        raise ValueError(f"pad_images: pad {pad} does not fit a {x.shape[2]}x{x.shape[3]} "
                         f"image in mode {mode!r}")
    widths = ((0, 0), (0, 0), (pad, pad), (pad, pad))
    if mode == "constant":
        return xp.ascontiguousarray(xp.pad(x, widths, mode="constant", constant_values=fill))
    return xp.ascontiguousarray(xp.pad(x, widths, mode=mode))


@on_array_device
def crop_and_flip(padded: Array, rows: Array, top: Array, left: Array, flip: Array,
                  size: tuple[int, int]) -> Array:
    """One gather: image ``rows[i]`` of ``padded`` (N, C, Hp, Wp), cropped to ``size``
    at offset (``top[i]``, ``left[i]``) and mirrored left-right where ``flip[i]``.

    ``rows``, ``top``, ``left``: int64 (B,) device arrays; ``flip``: bool (B,).
    Returns (B, C, size_h, size_w) in ``padded``'s dtype. One pass over the
    output, whatever mixes of offsets and flips the batch holds.
    """
    xp = get_array_module(padded)
    _, c, hp, wp = padded.shape
    th, tw = size
    cols = xp.arange(tw, dtype=xp.int64)
    cols = xp.where(flip[:, None], tw - 1 - cols, cols) + left[:, None]         # (B, tw)
    pix = (top[:, None] + xp.arange(th, dtype=xp.int64))[:, :, None] * wp + cols[:, None, :]
    plane = hp * wp
    base = (rows * (c * plane))[:, None, None, None] + \
        (xp.arange(c, dtype=xp.int64) * plane)[None, :, None, None]
    return xp.take(padded.reshape(-1), base + pix[:, None])


class RandomTranslate(Augmentation):
    """Shift each image by a random whole number of pixels in [-max_shift, max_shift]
    along H and W independently, filling the uncovered border by ``padding_mode``
    (``"reflect"`` as airbench does, ``"edge"``, or ``"constant"`` with ``fill``).

    The same as padding by ``max_shift`` and cutting a random crop of the input
    size (:class:`RandomCrop` with reflect padding). Input and output
    ``(N, C, H, W)`` float.
    """

    def __init__(self, max_shift: int = 2, padding_mode: str = "reflect",
                 fill: float = 0.0) -> None:
        if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
            raise ValueError(f"RandomTranslate: max_shift must be an int >= 0, got {max_shift!r}")
        if padding_mode not in PAD_MODES:
            raise ValueError(f"RandomTranslate: padding_mode must be one of {PAD_MODES}, "
                             f"got {padding_mode!r}")
        self.max_shift, self.padding_mode, self.fill = max_shift, padding_mode, float(fill)

    def _params(self) -> dict:
        return {"max_shift": self.max_shift, "padding_mode": self.padding_mode,
                "fill": self.fill}

    def __call__(self, x: Array) -> Array:
        xp = _check(x, "RandomTranslate")
        n, _, h, w = x.shape
        r = self.max_shift
        padded = pad_images(x, r, self.padding_mode, self.fill)
        gen = generator(xp)
        top = gen.integers(0, 2 * r + 1, size=n, dtype=xp.int64)
        left = gen.integers(0, 2 * r + 1, size=n, dtype=xp.int64)
        return crop_and_flip(padded, xp.arange(n, dtype=xp.int64), top, left,
                             xp.zeros(n, dtype=bool), (h, w))


class RandomHorizontalFlip(Augmentation):
    """Mirror each image left-right with probability ``p``.

    Input and output ``(N, C, H, W)`` float.
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p!r}")
        self.p = float(p)

    def _params(self) -> dict:
        return {"p": self.p}

    def __call__(self, x: Array) -> Array:
        xp = _check(x, "RandomHorizontalFlip")
        flip = generator(xp).random(x.shape[0], dtype=xp.float32) < self.p
        return xp.where(flip[:, None, None, None], x[..., ::-1], x)


class Cutout(Augmentation):
    """Cutout (DeVries & Taylor, 2017): set ``n_holes`` squares of ``length`` x
    ``length`` pixels per image to ``fill``.

    Each hole's centre ``(cy, cx)`` is uniform over the image; the hole covers
    rows ``cy - length//2 .. cy - length//2 + length - 1`` (same for columns),
    clipped at the borders. Input and output ``(N, C, H, W)`` float; all
    channels of a pixel are cut together.
    """

    def __init__(self, length: int = 8, n_holes: int = 1,
                 fill: "float | Sequence[float]" = 0.0) -> None:
        self.length = int(length)
        self.n_holes = int(n_holes)
        self.fill = fill if isinstance(fill, (int, float)) else [float(v) for v in fill]
        if self.length <= 0 or self.n_holes <= 0:
            raise ValueError(f"Cutout: length and n_holes must be positive, got "
                             f"length={length!r}, n_holes={n_holes!r}")

    def _params(self) -> dict:
        return {"length": self.length, "n_holes": self.n_holes, "fill": self.fill}

    def __call__(self, x: Array) -> Array:
        xp = _check(x, "Cutout")
        n, c, h, w = x.shape
        gen = generator(xp)
        cy = gen.integers(0, h, size=(n, self.n_holes), dtype=xp.int64)
        cx = gen.integers(0, w, size=(n, self.n_holes), dtype=xp.int64)
        y0 = (cy - self.length // 2)[:, :, None]
        x0 = (cx - self.length // 2)[:, :, None]
        ys = xp.arange(h, dtype=xp.int64)
        xs = xp.arange(w, dtype=xp.int64)
        in_y = (ys >= y0) & (ys < y0 + self.length)  # (N, holes, H)
        in_x = (xs >= x0) & (xs < x0 + self.length)  # (N, holes, W)
        hole = (in_y[:, :, :, None] & in_x[:, :, None, :]).any(axis=1)  # (N, H, W)
        return xp.where(hole[:, None], _fill_array(xp, self.fill, c, x.dtype, "Cutout"), x)


# -- colour -------------------------------------------------------------------

@on_array_device
def rgb_to_grayscale(x: Array) -> Array:
    """Luma ``0.2989 R + 0.587 G + 0.114 B`` (torchvision's weights) of a float
    ``(N, 3, H, W)`` batch, as ``(N, 1, H, W)``; a 1-channel batch is returned as is."""
    c = x.shape[1]
    if c == 1:
        return x
    if c != 3:
        raise ValueError(f"rgb_to_grayscale: expected 1 or 3 channels, got {c}")
    return 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _factor(xp: ModuleType, factor: Any, dtype: Any) -> Any:
    if isinstance(factor, (int, float)):
        return float(factor)
    return factor.astype(dtype, copy=False).reshape(-1, 1, 1, 1)


def _blend(xp: ModuleType, x: Array, other: Any, factor: Any) -> Array:
    """``clip(factor * x + (1 - factor) * other, 0, 1)`` as a new array."""
    out = x * factor
    out += (1.0 - factor) * other
    return xp.clip(out, 0.0, 1.0, out=out)


@on_array_device
def adjust_brightness(x: Array, factor: Any) -> Array:
    """``clip(x * factor, 0, 1)``; ``factor`` a float or an ``(N,)`` array (one per image)."""
    xp = _check(x, "adjust_brightness")
    out = x * _factor(xp, factor, x.dtype)
    return xp.clip(out, 0.0, 1.0, out=out)


@on_array_device
def adjust_contrast(x: Array, factor: Any) -> Array:
    """Blend each image with the mean of its grayscale version (torchvision semantics)."""
    xp = _check(x, "adjust_contrast")
    mean = rgb_to_grayscale(x).mean(axis=(1, 2, 3), keepdims=True)
    return _blend(xp, x, mean, _factor(xp, factor, x.dtype))


@on_array_device
def adjust_saturation(x: Array, factor: Any) -> Array:
    """Blend each image with its grayscale version (torchvision semantics)."""
    xp = _check(x, "adjust_saturation")
    return _blend(xp, x, rgb_to_grayscale(x), _factor(xp, factor, x.dtype))


class ColorJitter(Augmentation):
    """Random brightness, contrast and saturation per image, with torchvision's
    semantics, applied in that fixed order (torchvision picks a random order).

    Each argument ``v`` draws a factor uniform in ``[max(0, 1 - v), 1 + v]``
    (or in ``[lo, hi]`` when a pair is given): brightness multiplies the pixels,
    contrast blends with the image's mean gray level, saturation blends with the
    grayscale image; results are clipped to [0, 1] after each step. An argument
    of 0 skips that step (no random draw). Input and output ``(N, C, H, W)``
    float in [0, 1]; contrast/saturation need C == 3 (or 1).
    """

    def __init__(self, brightness: "float | Sequence[float]" = 0.0,
                 contrast: "float | Sequence[float]" = 0.0,
                 saturation: "float | Sequence[float]" = 0.0) -> None:
        self.brightness = self._range(brightness, "brightness")
        self.contrast = self._range(contrast, "contrast")
        self.saturation = self._range(saturation, "saturation")
        self._args = {"brightness": brightness, "contrast": contrast, "saturation": saturation}

    @staticmethod
    def _range(value: Any, what: str) -> "tuple[float, float] | None":
        if isinstance(value, (int, float)):
            if value < 0:
                raise ValueError(f"ColorJitter: {what} must be >= 0, got {value!r}")
            return None if value == 0 else (max(0.0, 1.0 - value), 1.0 + value)
        lo, hi = (float(v) for v in value)
        if not 0 <= lo <= hi:
            raise ValueError(f"ColorJitter: {what} range must satisfy 0 <= lo <= hi, got {value!r}")
        return None if lo == hi == 1.0 else (lo, hi)

    def _params(self) -> dict:
        return {k: (v if isinstance(v, (int, float)) else list(v)) for k, v in self._args.items()}

    def __call__(self, x: Array) -> Array:
        xp = _check(x, "ColorJitter")
        n = x.shape[0]
        out = x
        if self.brightness is not None:
            out = adjust_brightness(out, _uniform(xp, n, *self.brightness))
        if self.contrast is not None:
            out = adjust_contrast(out, _uniform(xp, n, *self.contrast))
        if self.saturation is not None:
            out = adjust_saturation(out, _uniform(xp, n, *self.saturation))
        return out.copy() if out is x else out


# -- geometry -----------------------------------------------------------------

class RandomRotation(Augmentation):
    """Rotate each image about its centre by an angle uniform in
    ``[-degrees, degrees]`` (or ``[lo, hi]`` for a pair), counter-clockwise for
    positive angles (as torchvision). Pixels are sampled ``"bilinear"`` or
    ``"nearest"`` from coordinate grids computed on the device; points outside
    the source image take ``fill``.

    Input and output ``(N, C, H, W)`` float. An angle of 0 is the identity; on a
    square image 90 degrees equals ``numpy.rot90(x, 1, axes=(2, 3))``.
    """

    def __init__(self, degrees: "float | Sequence[float]" = 10.0,
                 interpolation: str = "bilinear",
                 fill: "float | Sequence[float]" = 0.0) -> None:
        if isinstance(degrees, (int, float)):
            if degrees < 0:
                raise ValueError(f"RandomRotation: degrees must be >= 0, got {degrees!r}")
            self.degrees = (-float(degrees), float(degrees))
        else:
            lo, hi = (float(v) for v in degrees)
            if lo > hi:
                raise ValueError(f"RandomRotation: degrees range must have lo <= hi, "
                                 f"got {degrees!r}")
            self.degrees = (lo, hi)
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"RandomRotation: interpolation must be 'bilinear' or 'nearest', "
                             f"got {interpolation!r}")
        self.interpolation = interpolation
        self.fill = fill if isinstance(fill, (int, float)) else [float(v) for v in fill]

    def _params(self) -> dict:
        return {"degrees": list(self.degrees), "interpolation": self.interpolation,
                "fill": self.fill}

    def __call__(self, x: Array) -> Array:
        xp = _check(x, "RandomRotation")
        n, c, h, w = x.shape
        lo, hi = self.degrees
        theta = _uniform(xp, n, lo, hi) * xp.float32(math.pi / 180.0)
        cos = xp.cos(theta)[:, None, None]
        sin = xp.sin(theta)[:, None, None]
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        dy = (xp.arange(h, dtype=xp.float32) - xp.float32(cy))[None, :, None]
        dx = (xp.arange(w, dtype=xp.float32) - xp.float32(cx))[None, None, :]
        # inverse map: output pixel (dy, dx) samples the source rotated back by theta
        src_x = cos * dx - sin * dy + xp.float32(cx)  # (N, H, W)
        src_y = sin * dx + cos * dy + xp.float32(cy)

        # `fill` around each image (1 pixel before, 2 after), so every tap of a
        # coordinate clipped to [-1, size] reads either a pixel or fill
        hp, wp = h + 3, w + 3
        padded = xp.empty((n, c, hp, wp), dtype=x.dtype)
        padded[...] = _fill_array(xp, self.fill, c, x.dtype, "RandomRotation")
        padded[:, :, 1:h + 1, 1:w + 1] = x
        src_y = xp.clip(src_y, -1.0, float(h), out=src_y)
        src_x = xp.clip(src_x, -1.0, float(w), out=src_x)
        flat = padded.reshape(-1)
        if self.interpolation == "nearest":
            yi = xp.floor(src_y + 0.5).astype(xp.int64) + 1
            xi = xp.floor(src_x + 0.5).astype(xp.int64) + 1
            return xp.take(flat, _flat_index(xp, padded.shape, yi * wp + xi))
        y0f = xp.floor(src_y)
        x0f = xp.floor(src_x)
        fy = (src_y - y0f).astype(x.dtype)[:, None]  # (N, 1, H, W)
        fx = (src_x - x0f).astype(x.dtype)[:, None]
        index = _flat_index(xp, padded.shape,
                            (y0f.astype(xp.int64) + 1) * wp + x0f.astype(xp.int64) + 1)
        top = xp.take(flat, index)
        top_right = xp.take(flat, index + 1)
        index += wp
        bottom = xp.take(flat, index)
        bottom_right = xp.take(flat, index + 1)
        # lerp: an exact weight of 0 returns the pixel itself (angle 0 = identity)
        top_right -= top
        top_right *= fx
        top += top_right
        bottom_right -= bottom
        bottom_right *= fx
        bottom += bottom_right
        bottom -= top
        bottom *= fy
        top += bottom
        return top


class Normalize(Augmentation):
    """``(x - mean) / std`` per channel (not random). Input and output
    ``(N, C, H, W)`` float; ``mean`` and ``std`` have C values (or one)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(f"Normalize: mean and std need equal lengths and std > 0, got "
                             f"mean={mean!r}, std={std!r}")
        self._cache: dict = {}

    def _params(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def scale_shift(self, like: Array, pre_scale: float = 1.0) -> tuple[Array, Array]:
        """Arrays ``(scale, shift)`` of shape (1, C, 1, 1) on the device of ``like``
        (an (N, C, H, W) batch; float32 unless ``like`` is floating point) with
        ``normalize(pre_scale * x) == x * scale - shift``; cached per device."""
        xp = get_array_module(like)
        device = device_of(like)
        c = like.shape[1]
        dtype = like.dtype if like.dtype.kind == "f" else xp.float32
        key = (str(device), c, str(dtype), pre_scale)
        cached = self._cache.get(key)
        if cached is None:
            mean, std = self.mean, self.std
            if len(mean) == 1:
                mean, std = mean * c, std * c
            if len(mean) != c:
                raise ValueError(f"Normalize: {len(mean)} mean/std values for {c} channels")
            with device.context():
                scale = xp.asarray([pre_scale / s for s in std], dtype=dtype)
                shift = xp.asarray([m / s for m, s in zip(mean, std)], dtype=dtype)
            scale, shift = scale.reshape(1, c, 1, 1), shift.reshape(1, c, 1, 1)
            cached = self._cache[key] = (scale, shift)
        return cached

    def __call__(self, x: Array) -> Array:
        _check(x, "Normalize")
        scale, shift = self.scale_shift(x)
        out = x * scale
        out -= shift
        return out
