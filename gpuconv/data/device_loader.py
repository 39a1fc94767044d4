"""A data loader that keeps the whole dataset on the device (airbench's way).

:class:`DataLoader` gathers each batch on the host and uploads it; for small
datasets that fit in device memory (CIFAR-10: 50,000 x 3 x 32 x 32 float32 is
0.6 GB) it is faster to upload once and gather on the device.
:class:`DeviceDataLoader` does that, with the two augmentations of Keller
Jordan's airbench recipe folded into the same gather:

- ``translate=r``: each image is shifted by a random number of pixels in
  [-r, r] along H and W, the border filled by reflection (the set is
  reflect-padded once, at construction; each batch is one crop gather);
- ``flip="alternating"``: a random half of the images is mirrored in epoch 0,
  and in every odd epoch *every* image is mirrored relative to that, so each
  image is seen both ways in every pair of epochs (airbench's "alternating
  flip"); ``"random"`` mirrors each image with probability 1/2 every epoch,
  None never.

Randomness comes from host NumPy generators keyed by ``(seed, epoch)`` only:
the order (``gpuconv.backend.epoch_order``, the same as :class:`DataLoader`'s),
the shifts and the flips of epoch ``e`` are the same on the CPU and on a GPU,
and a resumed run sees the same batches without saving any generator state.

Data parallelism (``comm``): the same global-batch rule as
:class:`DataLoader`'s. ``batch_size`` is the global batch (it must divide by
``comm.size``); every rank holds the whole set, walks the same order and
yields its contiguous shard of each global batch
(:func:`gpuconv.distributed.shard_bounds`), with the shifts and flips of
those samples, so the ranks together see exactly one process's batches.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy

from ..backend import Device, get_device, get_seed, to_device
from ..distributed import shard_bounds
from .augment import Normalize, crop_and_flip, pad_images
from .datasets import ArrayDataset
from .epochs import EpochBatches

__all__ = ["DeviceDataLoader", "FLIP_MODES", "flip_mask", "translate_offsets"]

Array = Any
FLIP_MODES = (None, "random", "alternating")
# stream ids of the per-epoch host generators (default_rng([seed, epoch, stream]));
# epoch_order uses default_rng([seed, epoch]), a different stream
_SHIFT_STREAM, _FLIP_STREAM = 1, 2


def flip_mask(n: int, seed: int, epoch: int, mode: "str | None") -> numpy.ndarray:
    """bool (n,): which samples are mirrored in ``epoch`` (0-based) under ``mode``."""
    if mode is None:
        return numpy.zeros(n, dtype=bool)
    if mode == "random":
        return numpy.random.default_rng([seed, epoch, _FLIP_STREAM]).random(n) < 0.5
    if mode == "alternating":
        first = numpy.random.default_rng([seed, 0, _FLIP_STREAM]).random(n) < 0.5
        return first ^ bool(epoch % 2)
    raise ValueError(f"flip mode must be one of {FLIP_MODES}, got {mode!r}")


def translate_offsets(n: int, seed: int, epoch: int, max_shift: int
                      ) -> tuple[numpy.ndarray, numpy.ndarray]:
    """int64 (n,) row and column offsets in [0, 2 max_shift] into the padded images
    (offset ``max_shift`` is no shift) for ``epoch``."""
    gen = numpy.random.default_rng([seed, epoch, _SHIFT_STREAM])
    size = 2 * max_shift + 1
    return (gen.integers(0, size, n, dtype=numpy.int64),
            gen.integers(0, size, n, dtype=numpy.int64))


class DeviceDataLoader(EpochBatches):
    """Mini-batches ``(x, y)`` gathered on the device from a device-resident dataset.

    Args:
        dataset: ``.images`` (N, C, H, W) uint8 or float host array and ``.labels``
            (N,) ints (a CIFAR10, an ArrayDataset, ...), or an ``(images, labels)`` pair.
        batch_size: samples per batch.
        shuffle, drop_last, seed: as :class:`~gpuconv.data.DataLoader` (same orders).
        device: where the data lives and batches are delivered (None: ``get_device()``).
        normalize: ``(mean, std)`` per channel in [0, 1] pixel units, or a Normalize.
        translate: maximal random shift in pixels (reflect-padded), 0 for none.
        flip: None, ``"random"`` or ``"alternating"`` (see the module docstring).
        dtype: float dtype of the stored and delivered images (default float32).
        comm: a :mod:`gpuconv.distributed` communicator: ``batch_size`` is the global
            batch and each rank yields its shard (see the module docstring).

    Yields ``x`` (B, C, H, W) ``dtype`` and ``y`` int64 (B,) on ``device``. Device
    memory: the (padded) float images, N C (H + 2t) (W + 2t) values, held for the
    loader's lifetime. Uint8 images are scaled by 1/255 before ``normalize``.
    """

    def __init__(self, dataset: Any, batch_size: int, shuffle: bool = False,
                 drop_last: bool = False, seed: "int | None" = None,
                 device: "str | Device | None" = None,
                 normalize: "tuple[Sequence[float], Sequence[float]] | Normalize | None" = None,
                 translate: int = 0, flip: "str | None" = None,
                 dtype: Any = numpy.float32, comm: Any = None) -> None:
        if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
            dataset = ArrayDataset(*dataset)
        if not (hasattr(dataset, "images") and hasattr(dataset, "labels")):
            raise TypeError("DeviceDataLoader: dataset must have .images and .labels or be "
                            f"an (images, labels) pair, got {type(dataset).__name__}")
        images, labels = numpy.asarray(dataset.images), numpy.asarray(dataset.labels)
        if images.ndim != 4 or labels.shape != (images.shape[0],):
            raise ValueError(f"DeviceDataLoader: expected images (N, C, H, W) and labels (N,), "
                             f"got {images.shape} and {labels.shape}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, numpy.integer)) \
                or batch_size <= 0:
            raise ValueError(f"DeviceDataLoader: batch_size must be a positive int, "
                             f"got {batch_size!r}")
        if isinstance(translate, bool) or not isinstance(translate, int) or translate < 0:
            raise ValueError(f"DeviceDataLoader: translate must be an int >= 0, got {translate!r}")
        if flip not in FLIP_MODES:
            raise ValueError(f"DeviceDataLoader: flip must be one of {FLIP_MODES}, got {flip!r}")
        if normalize is not None and not isinstance(normalize, Normalize):
            normalize = Normalize(*normalize)
        self.dtype = numpy.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"DeviceDataLoader: dtype must be floating point, got {self.dtype}")
        self.dataset = dataset
        self.classes = getattr(dataset, "classes", None)
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.seed = int(get_seed() if seed is None else seed)
        self.device: Device = get_device(device)
        self.normalize, self.translate, self.flip = normalize, translate, flip
        self.image_size = (int(images.shape[2]), int(images.shape[3]))
        self.num_samples = int(images.shape[0])
        self._init_epochs(comm)
        with self.device.context():
            self.images = self._upload(images)
            self.labels = to_device(numpy.ascontiguousarray(labels, dtype=numpy.int64),
                                    self.device)

    def _upload(self, images: numpy.ndarray) -> Array:
        """The stored images: float, normalised, reflect-padded by ``translate``."""
        x = to_device(numpy.ascontiguousarray(images), self.device)
        pre_scale = 1.0 / 255.0 if images.dtype == numpy.uint8 else 1.0
        x = x.astype(self.dtype)
        if self.normalize is not None:
            scale, shift = self.normalize.scale_shift(x, pre_scale=pre_scale)
            x *= scale
            x -= shift
        elif pre_scale != 1.0:
            x *= pre_scale
        return pad_images(x, self.translate, "reflect") if self.translate else x

    def normalized_images(self, count: "int | None" = None) -> Array:
        """The first ``count`` (all: None) stored images without padding, flips or
        shifts: (count, C, H, W) on the device, normalised (a view, do not modify)."""
        r = self.translate
        h, w = self.image_size
        stop = self.num_samples if count is None else min(int(count), self.num_samples)
        return self.images[:stop, :, r:r + h, r:r + w] if r else self.images[:stop]

    # -- iteration ---------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[Array, Array]]:
        epoch, skip = self._next_epoch()
        return self._iterate(epoch, skip)

    def _iterate(self, epoch: int, skip: int = 0) -> Iterator[tuple[Array, Array]]:
        n, b, r = self.num_samples, self.batch_size, self.translate
        order = self.order(epoch)
        flips = flip_mask(n, self.seed, epoch, self.flip)
        if r:
            top, left = translate_offsets(n, self.seed, epoch, r)
        else:
            top = left = numpy.zeros(n, dtype=numpy.int64)
        dev = self.device
        for start in range(skip * b, len(self) * b, b):
            idx = order[start:min(start + b, n)]
            if self.world > 1:  # this rank's shard of the global batch
                lo, hi = shard_bounds(len(idx), self.world, self.rank)
                idx = idx[lo:hi]
            with dev.context():
                rows = to_device(idx, dev)
                x = crop_and_flip(self.images, rows, to_device(top[idx], dev),
                                  to_device(left[idx], dev), to_device(flips[idx], dev),
                                  self.image_size)
                yield x, self.labels[rows]

    def __repr__(self) -> str:
        return (f"DeviceDataLoader(n={self.num_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, translate="
                f"{self.translate}, flip={self.flip!r}, device={self.device})")
