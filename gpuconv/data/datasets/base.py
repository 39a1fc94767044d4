"""In-memory image datasets, the data root and the errors loaders raise."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy

__all__ = [
    "ArrayDataset", "default_root", "DatasetNotFoundError", "CorruptDatasetError",
    "DownloadError",
]


class DatasetNotFoundError(FileNotFoundError):
    """The dataset files are not where they were looked for (the message says
    where to put them)."""


class DownloadError(DatasetNotFoundError):
    """Fetching a dataset failed (offline, HTTP error, checksum mismatch,
    unsafe archive); the message says where to put the files by hand."""


class CorruptDatasetError(ValueError):
    """A dataset file exists but is truncated, malformed or inconsistent.

    The message is one line, ``"<file>: <what is wrong: expected ..., found ...>"``
    (line breaks in ``message`` become spaces), so a command line tool can print
    it as is. ``path`` is the offending file when known, else ``None``.
    """

    def __init__(self, message: str, *, path: "str | os.PathLike[str] | None" = None) -> None:
        message = " ".join(str(message).replace("\r\n", "\n").replace("\r", "\n").split("\n"))
        super().__init__(message)
        self.path: "Path | None" = None if path is None else Path(path)


def default_root() -> Path:
    """The data root used when none is given: ``$GPUCONV_DATA``, else
    ``~/.cache/gpuconv``."""
    env = os.environ.get("GPUCONV_DATA")
    if env:
        return Path(env).expanduser()
    return Path(os.path.expanduser("~")) / ".cache" / "gpuconv"


def resolve_root(root: "str | os.PathLike[str] | None") -> Path:
    return default_root() if root is None else Path(root).expanduser()


class ArrayDataset:
    """A dataset held as two host (NumPy) arrays.

    Attributes:
        images: ``(N, C, H, W)`` array, uint8 pixels (0..255) or floating point.
        labels: ``(N,)`` int64 class indices.
        classes: list of ``K`` class names; every label is in ``0..K-1``.

    ``ds[i]`` returns ``(images[i], labels[i])``; ``i`` may also be a slice or an
    integer index array (then both parts are arrays).
    """

    def __init__(self, images: Any, labels: Any,
                 classes: "Sequence[str] | None" = None) -> None:
        images = numpy.asarray(images)
        labels = numpy.asarray(labels)
        name = type(self).__name__
        if images.ndim != 4:
            raise ValueError(f"{name}: images must have shape (N, C, H, W), got {images.shape}")
        if not (images.dtype == numpy.uint8 or numpy.issubdtype(images.dtype, numpy.floating)):
            raise TypeError(f"{name}: images must be uint8 or floating point, got {images.dtype}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"{name}: labels must have shape ({images.shape[0]},) to match "
                             f"the images, got {labels.shape}")
        if labels.size and not numpy.issubdtype(labels.dtype, numpy.integer):
            raise TypeError(f"{name}: labels must be integers, got {labels.dtype}")
        labels = labels.astype(numpy.int64, copy=False)
        if classes is None:
            num = int(labels.max()) + 1 if labels.size else 0
            classes = [str(k) for k in range(num)]
        classes = [str(c) for c in classes]
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"{name}: labels must lie in 0..{len(classes) - 1} "
                             f"({len(classes)} classes), got {labels.min()}..{labels.max()}")
        self.images: numpy.ndarray = images
        self.labels: numpy.ndarray = labels
        self.classes: list[str] = classes

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: Any) -> tuple[Any, Any]:
        return self.images[index], self.labels[index]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={len(self)}, shape={tuple(self.images.shape[1:])}, "
                f"dtype={self.images.dtype}, classes={len(self.classes)})")
