"""Mini-batches for ``fit``: a simple batcher over host arrays, and device checks.

``fit`` accepts any re-iterable object yielding ``(x, y)`` batches that
already live on the model's device. :class:`ArrayBatches` is the simplest
such object: it slices NumPy arrays and copies each batch to the device.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy

from ..backend import (Array, Device, device_of, epoch_order, get_device, host_generator,
                       to_device)

__all__ = ["ArrayBatches", "check_batch", "bind_device"]


class ArrayBatches:
    """Iterate ``(x[i], y[i])`` mini-batches of host arrays, moved to ``device``.

    ``x``: numpy array (N, ...) of inputs (its dtype is kept: match the model's
    dtype, e.g. float32); ``y``: numpy array (N, ...) of targets (int64 class
    labels or float targets). Each batch is ``(to_device(x[idx]),
    to_device(y[idx]))``.

    Shuffling is reproducible and resumable: the permutation of epoch ``e`` is
    ``numpy.random.default_rng([seed, e]).permutation(N)``, a function of
    ``(seed, epoch)`` only. ``fit`` calls :meth:`set_epoch` at the start of
    every epoch (1-based); used on its own, each ``iter()`` advances the epoch
    by one. ``seed=None`` draws a seed once from gpuconv's host generator, so
    it follows ``gpuconv.seed``. ``device=None`` means the model's device when
    passed to ``fit``/``evaluate`` (and the CPU otherwise).
    """

    def __init__(self, x: numpy.ndarray, y: numpy.ndarray, batch_size: int = 32,
                 shuffle: bool = True, seed: int | None = None,
                 device: "str | Device | None" = None, drop_last: bool = False) -> None:
        if not isinstance(x, numpy.ndarray) or not isinstance(y, numpy.ndarray):
            raise TypeError(f"ArrayBatches: x and y must be numpy arrays (host data), got "
                            f"{type(x).__name__} and {type(y).__name__}")
        if len(x) != len(y):
            raise ValueError(f"ArrayBatches: x has {len(x)} samples but y has {len(y)}")
        if not isinstance(batch_size, (int, numpy.integer)) or batch_size < 1:
            raise ValueError(f"ArrayBatches: batch_size must be a positive int, got {batch_size!r}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(host_generator().integers(2**63)) if seed is None else int(seed)
        self.device = None if device is None else get_device(device)
        self.drop_last = bool(drop_last)
        self.epoch = 0  # the epoch whose permutation the next iter() uses, minus one
        self.skip = 0   # batches the next iter() leaves out (a mid-epoch resume)

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` yield epoch ``epoch``'s order (1-based)."""
        self.epoch = int(epoch) - 1

    def skip_batches(self, n: int) -> None:
        """Make the next ``iter()`` start at batch ``n + 1`` of its epoch (the same
        batches an uninterrupted epoch yields from there); for one iteration only."""
        if isinstance(n, bool) or not isinstance(n, (int, numpy.integer)) or n < 0:
            raise ValueError(f"ArrayBatches: skip_batches needs an int >= 0, got {n!r}")
        self.skip = int(n)

    def order(self, epoch: int) -> numpy.ndarray:
        """Sample indices (int64, shape (N,)) of epoch ``epoch``."""
        return epoch_order(len(self.x), self.seed, epoch, self.shuffle)

    def __iter__(self) -> Iterator[tuple[Array, Array]]:
        self.epoch += 1
        idx = self.order(self.epoch)
        device = self.device or get_device("cpu")
        start, self.skip = self.skip, 0
        for i in range(start, len(self)):
            part = idx[i * self.batch_size:(i + 1) * self.batch_size]
            yield to_device(self.x[part], device), to_device(self.y[part], device)

    def on(self, device: "str | Device") -> "ArrayBatches":
        """A copy sharing the arrays (not the epoch counter) that yields batches on ``device``."""
        other = object.__new__(ArrayBatches)
        other.__dict__ = dict(self.__dict__)
        other.device = get_device(device)
        return other

    def state_dict(self) -> dict:
        """JSON-able state for checkpoints: ``{"seed": int, "epoch": int}``."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])

    def __repr__(self) -> str:
        return (f"ArrayBatches(n={len(self.x)}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, seed={self.seed}, device={self.device})")


def bind_device(data: Any, device: Device) -> Any:
    """``data`` itself, or for an ArrayBatches without a device, a view on ``device``."""
    if isinstance(data, ArrayBatches) and data.device is None:
        return data.on(device)
    return data


def check_batch(x: Any, y: Any, device: Device, where: str) -> None:
    """TypeError unless ``x`` and ``y`` are arrays on ``device`` (host-side, no sync)."""
    for name, a in (("x", x), ("y", y)):
        try:
            d = device_of(a)
        except TypeError:
            raise TypeError(f"{where}: batch {name} must be an array on {device}, got "
                            f"{type(a).__module__}.{type(a).__name__}; data must yield "
                            "(x, y) pairs of arrays") from None
        if d != device:
            raise TypeError(f"{where}: batch {name} is on {d} but the model is on {device}; "
                            "move the data (gpuconv.backend.to_device, or ArrayBatches(..., "
                            "device=None) which follows the model) or the model (.to())")
