"""MNIST-style IDX files (MNIST, Fashion-MNIST), raw or gzip-compressed."""
from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import ClassVar, Sequence

import numpy

from .base import ArrayDataset, CorruptDatasetError, DatasetNotFoundError, resolve_root

__all__ = ["MNIST", "FashionMNIST", "read_idx", "FASHION_MNIST_CLASSES"]

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

FASHION_MNIST_CLASSES: list[str] = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


_IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32",
              0x0D: "float32", 0x0E: "float64"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _check_header(raw: bytes, path: Path, magic: int) -> "tuple[list[int], int]":
    """Validate the IDX header of ``raw`` against ``magic``; return (dims, header bytes)."""
    kind = "an images file: count, rows, columns" if magic == IMAGES_MAGIC else \
        "a labels file: count"
    want_ndim = magic & 0xFF
    header = 4 + 4 * want_ndim
    if len(raw) < 4:
        raise CorruptDatasetError(f"{path}: {_plural(len(raw), 'byte')}, the IDX header needs "
                                  f"{header}", path=path)
    if raw[0] or raw[1]:
        hint = ("; it looks gzip-compressed, name it " + path.name + ".gz"
                if raw[:2] == b"\x1f\x8b" else "")
        raise CorruptDatasetError(f"{path}: not an IDX file (it starts with {raw[:4].hex(' ')}, "
                                  f"expected {magic.to_bytes(4, 'big').hex(' ')}){hint}",
                                  path=path)
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        if raw[2] != magic >> 8:
            what = (f"element type 0x{raw[2]:02x} ({_IDX_TYPES.get(raw[2], 'unknown')}), "
                    f"expected 0x{magic >> 8:02x} (unsigned byte)")
        else:
            what = (f"{_plural(raw[3], 'dimension')}, expected {want_ndim} ({kind})")
        raise CorruptDatasetError(f"{path}: IDX magic number {found}, expected {magic}: {what}",
                                  path=path)
    if len(raw) < header:
        raise CorruptDatasetError(f"{path}: {_plural(len(raw), 'byte')}, the IDX header needs "
                                  f"{header}", path=path)
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(want_ndim)]
    return dims, header


def _read_raw(path: Path, limit: int = -1) -> bytes:
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            return f.read(limit)
    with open(path, "rb") as f:
        return f.read(limit)


def read_idx(path: "str | os.PathLike[str]", magic: int) -> numpy.ndarray:
    """Read one IDX file of unsigned bytes (gzip-compressed if it ends in ``.gz``).

    ``magic`` is 2051 for images (result uint8 ``(N, H, W)``) or 2049 for
    labels (uint8 ``(N,)``). A file that is not IDX, a wrong magic number (element
    type or dimension count), or a length other than the header's exactly
    (truncated or trailing bytes) raises :class:`CorruptDatasetError` with a
    one-line message naming the file.
    """
    path = Path(path)
    try:
        raw = _read_raw(path)
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptDatasetError(f"{path}: cannot read the file, it is truncated or corrupt "
                                  f"({type(exc).__name__}: {exc})", path=path) from exc
    dims, header = _check_header(raw, path, magic)
    expected = header + math.prod(dims)
    if len(raw) != expected:
        size = f"{_plural(len(raw), 'byte')}{' (decompressed)' if path.name.endswith('.gz') else ''}"
        diff = expected - len(raw)
        state = (f"{_plural(diff, 'byte')} short, the file is truncated" if diff > 0
                 else f"{_plural(-diff, 'trailing byte')} after the data")
        raise CorruptDatasetError(f"{path}: {size}, expected {expected} bytes ({header}-byte "
                                  f"header + {' x '.join(map(str, dims))}); {state}", path=path)
    return numpy.frombuffer(raw, dtype=numpy.uint8, offset=header).reshape(dims).copy()


def _idx_count(path: "Path | None", magic: int) -> "int | None":
    """The item count in an IDX header, or None if there is no such (readable) file."""
    if path is None:
        return None
    try:
        dims, _ = _check_header(_read_raw(path, 4 + 4 * (magic & 0xFF)), path, magic)
    except (OSError, EOFError, zlib.error, CorruptDatasetError):
        return None
    return dims[0]


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
        image_size: the required ``(rows, columns)`` of every image, 28x28 as in
            MNIST and Fashion-MNIST; ``None`` accepts any size.

    Attributes:
        images: uint8 ``(N, 1, H, W)`` (28x28 for MNIST).
        labels: int64 ``(N,)``.
        classes: list of names.

    A wrong file raises :class:`CorruptDatasetError` with a one-line message
    naming it (see :func:`read_idx`; also: image size, images vs labels count,
    label range). Once any of the four files has its official item count
    (:attr:`official_sizes`: 60,000 train, 10,000 t10k), the loaded split must have
    its official count too; smaller folders with other counts are accepted.
    """

    subdir: str = "mnist"
    default_classes: list[str] = [str(k) for k in range(10)]
    #: item counts of the official splits (MNIST and Fashion-MNIST alike)
    official_sizes: ClassVar[dict[str, int]] = {"train": 60000, "t10k": 10000}

    def __init__(self, root: "str | os.PathLike[str] | None" = None, train: bool = True,
                 classes: "Sequence[str] | None" = None, *,
                 image_size: "tuple[int, int] | None" = (28, 28)) -> None:
        folder = resolve_root(None) / self.subdir if root is None else resolve_root(root)
        self.root: Path = folder
        self.train = bool(train)
        prefix = "train" if train else "t10k"
        img_path = self._locate(folder, f"{prefix}-images-idx3-ubyte")
        lab_path = self._locate(folder, f"{prefix}-labels-idx1-ubyte")
        images = read_idx(img_path, IMAGES_MAGIC)
        labels = read_idx(lab_path, LABELS_MAGIC)
        name = type(self).__name__
        if image_size is not None and tuple(images.shape[1:]) != tuple(image_size):
            raise CorruptDatasetError(
                f"{img_path}: images are {images.shape[1]}x{images.shape[2]}, expected "
                f"{image_size[0]}x{image_size[1]} ({name}); pass image_size=None to accept "
                "other sizes", path=img_path)
        if images.shape[0] != labels.shape[0]:
            raise CorruptDatasetError(f"{img_path}: {images.shape[0]} images but "
                                      f"{lab_path} holds {labels.shape[0]} labels",
                                      path=img_path)
        official = self.official_sizes.get(prefix)
        if official is not None and images.shape[0] != official and self._official(folder):
            raise CorruptDatasetError(
                f"{img_path}: {images.shape[0]} images, expected {official} (the official "
                f"{prefix} split; other files in {folder} have the official sizes)",
                path=img_path)
        classes = list(self.default_classes if classes is None else classes)
        if labels.size and labels.max() >= len(classes):
            raise CorruptDatasetError(f"{lab_path}: labels must lie in 0..{len(classes) - 1} "
                                      f"({len(classes)} classes), found "
                                      f"{labels.min()}..{labels.max()}", path=lab_path)
        super().__init__(images[:, None], labels.astype(numpy.int64), classes)

    def _official(self, folder: Path) -> bool:
        """Whether any of the four files' headers has its split's official count."""
        for prefix, count in self.official_sizes.items():
            for kind, magic in (("images-idx3", IMAGES_MAGIC), ("labels-idx1", LABELS_MAGIC)):
                path = self._find(folder, f"{prefix}-{kind}-ubyte")
                if _idx_count(path, magic) == count:
                    return True
        return False

    @staticmethod
    def _find(folder: Path, name: str) -> "Path | None":
        for candidate in (folder / name, folder / (name + ".gz")):
            if candidate.is_file():
                return candidate
        return None

    def _locate(self, folder: Path, name: str) -> Path:
        found = self._find(folder, name)
        if found is not None:
            return found
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
