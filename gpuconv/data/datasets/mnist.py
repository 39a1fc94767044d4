"""MNIST-style IDX files (MNIST, Fashion-MNIST), raw or gzip-compressed."""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy

from .base import ArrayDataset, CorruptDatasetError, DatasetNotFoundError, resolve_root

__all__ = ["MNIST", "FashionMNIST", "read_idx", "FASHION_MNIST_CLASSES"]

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

FASHION_MNIST_CLASSES: list[str] = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: "str | os.PathLike[str]", magic: int) -> numpy.ndarray:
    """Read one IDX file of unsigned bytes (gzip-compressed if it ends in ``.gz``).

    ``magic`` is 2051 for images (result uint8 ``(N, H, W)``) or 2049 for
    labels (uint8 ``(N,)``). A wrong magic number or a payload size that does not
    match the header raises :class:`CorruptDatasetError` naming the file.
    """
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptDatasetError(f"{path}: cannot read the file, it is truncated or corrupt "
                                  f"({type(exc).__name__}: {exc})") from exc
    if len(raw) < 4:
        raise CorruptDatasetError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise CorruptDatasetError(f"{path}: IDX magic number {found}, expected {magic} "
                                  f"({'images' if magic == IMAGES_MAGIC else 'labels'})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptDatasetError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(numpy.prod(dims, dtype=numpy.int64))
    if len(raw) != expected:
        raise CorruptDatasetError(f"{path}: {len(raw)} bytes but the header {dims} needs "
                                  f"{expected}; the file is truncated or corrupt")
    return numpy.frombuffer(raw, dtype=numpy.uint8, offset=header).reshape(dims).copy()


class MNIST(ArrayDataset):
    """MNIST (or any dataset in the same four IDX files).

    Args:
        root: folder holding ``train-images-idx3-ubyte``,
            ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
            ``t10k-labels-idx1-ubyte``, each raw or with ``.gz`` (the raw file
            is used when both exist); default ``<data root>/mnist`` where the
            data root is ``$GPUCONV_DATA``, else ``~/.cache/gpuconv``.
        train: training (``train-*``) or test (``t10k-*``) files.
        classes: class names (default ``'0'`` .. ``'9'``); labels must be below
            ``len(classes)``.

    Attributes:
        images: uint8 ``(N, 1, H, W)`` (28x28 for MNIST).
        labels: int64 ``(N,)``.
        classes: list of names.
    """

    subdir: str = "mnist"
    default_classes: list[str] = [str(k) for k in range(10)]

    def __init__(self, root: "str | os.PathLike[str] | None" = None, train: bool = True,
                 classes: "Sequence[str] | None" = None) -> None:
        folder = resolve_root(None) / self.subdir if root is None else resolve_root(root)
        self.root: Path = folder
        self.train = bool(train)
        prefix = "train" if train else "t10k"
        img_path = self._locate(folder, f"{prefix}-images-idx3-ubyte")
        lab_path = self._locate(folder, f"{prefix}-labels-idx1-ubyte")
        images = read_idx(img_path, IMAGES_MAGIC)
        labels = read_idx(lab_path, LABELS_MAGIC)
        if images.shape[0] != labels.shape[0]:
            raise CorruptDatasetError(f"{img_path} holds {images.shape[0]} images but "
                                      f"{lab_path} holds {labels.shape[0]} labels")
        classes = list(self.default_classes if classes is None else classes)
        if labels.size and labels.max() >= len(classes):
            raise CorruptDatasetError(f"{lab_path}: label {labels.max()} but only "
                                      f"{len(classes)} classes")
        super().__init__(images[:, None], labels.astype(numpy.int64), classes)

    def _locate(self, folder: Path, name: str) -> Path:
        for candidate in (folder / name, folder / (name + ".gz")):
            if candidate.is_file():
                return candidate
        raise DatasetNotFoundError(
            f"{type(self).__name__}: {folder / name} (or {name}.gz) not found. Put the four "
            f"IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, raw or .gz) in {folder}, "
            "or pass root=.")


class FashionMNIST(MNIST):
    """Fashion-MNIST: the MNIST file format with clothing classes; default
    folder ``<data root>/fashion-mnist``."""

    subdir = "fashion-mnist"
    default_classes = FASHION_MNIST_CLASSES
