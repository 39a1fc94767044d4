"""CIFAR-10 from either official on-disk layout.

``root/cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5``,
``test_batch`` and ``batches.meta``, pickles of dicts whose keys are bytes or
str (``b"data"``: uint8 ``(N, 3072)`` rows, channel-major R, G, B planes of
32x32; ``b"labels"``: N ints). Loaded with a restricted unpickler, so a
tampered file cannot run code.

``root/cifar-10-batches-bin/``: ``data_batch_1.bin`` .. ``data_batch_5.bin``,
``test_batch.bin`` and ``batches.meta.txt``; each record is 1 label byte then
3072 pixel bytes (channel-major).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy

from .base import ArrayDataset, CorruptDatasetError, DatasetNotFoundError, DownloadError, \
    resolve_root
from .download import download_and_extract
from .safe_pickle import load_pickle

__all__ = ["CIFAR10", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_CLASSES"]

#: Per-channel mean and standard deviation of the CIFAR-10 training images in
#: [0, 1] pixel units (R, G, B).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES: list[str] = ["airplane", "automobile", "bird", "cat", "deer",
                              "dog", "frog", "horse", "ship", "truck"]

_PY_DIR = "cifar-10-batches-py"
_BIN_DIR = "cifar-10-batches-bin"
_PIXELS = 3 * 32 * 32
_RECORD = 1 + _PIXELS


def _key(d: dict, name: str, path: Path):
    for k in (name, name.encode("latin-1")):
        if k in d:
            return d[k]
    raise CorruptDatasetError(f"{path}: the pickled dict has no {name!r} entry "
                              f"(keys: {sorted(map(repr, d))})")


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class CIFAR10(ArrayDataset):
    """The CIFAR-10 training (50,000) or test (10,000) images.

    Args:
        root: folder holding ``cifar-10-batches-py/`` or ``cifar-10-batches-bin/``
            (or one of those folders itself); default ``$GPUCONV_DATA``, else
            ``~/.cache/gpuconv``.
        train: the five training batches (True) or the test batch (False).
        download: fetch and unpack :attr:`url` into ``root`` if neither layout is
            there (MD5-checked, unpacked atomically).
        layout: ``"auto"`` (the python layout if present, else binary), ``"py"``
            or ``"bin"``.
        url, md5: override the class attributes (e.g. a mirror or a local file).

    Attributes:
        images: uint8 ``(N, 3, 32, 32)`` (N = 50000 or 10000 for the official data).
        labels: int64 ``(N,)`` in 0..9.
        classes: the 10 class names.

    Missing, truncated or inconsistent files raise
    :class:`DatasetNotFoundError` / :class:`CorruptDatasetError` naming the file;
    a dataset is never returned partially.
    """

    url: str = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    md5: "str | None" = "c58f30108f718f92721af3b95e74349a"
    archive_name: str = "cifar-10-python.tar.gz"
    mean = CIFAR10_MEAN
    std = CIFAR10_STD

    def __init__(self, root: "str | os.PathLike[str] | None" = None, train: bool = True,
                 download: bool = False, *, layout: str = "auto",
                 url: "str | None" = None, md5: "str | None" = None) -> None:
        if layout not in ("auto", "py", "bin"):
            raise ValueError(f"CIFAR10: layout must be 'auto', 'py' or 'bin', got {layout!r}")
        base = resolve_root(root)
        if base.name in (_PY_DIR, _BIN_DIR):
            base = base.parent
        self.root: Path = base
        self.train = bool(train)
        folder = self._find(base, layout)
        if folder is None and download:
            url = url or self.url
            md5 = self.md5 if md5 is None and url == self.url else md5
            try:
                download_and_extract(url, md5, base, self.archive_name, [_PY_DIR, _BIN_DIR])
            except DownloadError as exc:
                raise DownloadError(f"{exc}\n{self._where_to_put()}") from exc
            folder = self._find(base, layout)
        if folder is None:
            raise DatasetNotFoundError(f"CIFAR-10 not found under {base}. {self._where_to_put()}")
        self.layout: str = "py" if folder.name == _PY_DIR else "bin"
        self.folder: Path = folder
        if self.layout == "py":
            images, labels, classes = self._load_py(folder)
        else:
            images, labels, classes = self._load_bin(folder)
        super().__init__(images, labels, classes)

    def _where_to_put(self) -> str:
        return (f"Download {self.url} (MD5 {self.md5}) and unpack it so that "
                f"{self.root / _PY_DIR / 'data_batch_1'} exists (or unpack the binary version "
                f"so that {self.root / _BIN_DIR / 'data_batch_1.bin'} exists), "
                "or pass download=True; set GPUCONV_DATA or root= to use another folder.")

    @staticmethod
    def _find(base: Path, layout: str) -> "Path | None":
        names = {"auto": [_PY_DIR, _BIN_DIR], "py": [_PY_DIR], "bin": [_BIN_DIR]}[layout]
        for name in names:
            if (base / name).is_dir():
                return base / name
        return None

    def _files(self, folder: Path, suffix: str) -> list[Path]:
        names = [f"data_batch_{k}" for k in range(1, 6)] if self.train else ["test_batch"]
        paths = [folder / (n + suffix) for n in names]
        for p in paths:
            if not p.is_file():
                raise DatasetNotFoundError(
                    f"CIFAR-10 file {p} is missing (the folder {folder} is incomplete). "
                    f"{self._where_to_put()}")
        return paths

    # -- python layout -------------------------------------------------------
    def _load_py(self, folder: Path):
        images, labels = [], []
        for path in self._files(folder, ""):
            batch = load_pickle(path)
            if not isinstance(batch, dict):
                raise CorruptDatasetError(f"{path}: expected a pickled dict, got "
                                          f"{type(batch).__name__}")
            data = _key(batch, "data", path)
            labs = _key(batch, "labels", path)
            if not isinstance(data, numpy.ndarray) or data.dtype != numpy.uint8 or \
                    data.ndim != 2 or data.shape[1] != _PIXELS:
                desc = (f"{data.dtype} {data.shape}" if isinstance(data, numpy.ndarray)
                        else type(data).__name__)
                raise CorruptDatasetError(f"{path}: 'data' must be a uint8 (N, {_PIXELS}) "
                                          f"array, got {desc}")
            if data.shape[0] == 0:
                raise CorruptDatasetError(f"{path}: holds no images")
            try:
                labs = numpy.asarray(labs)
            except Exception as exc:
                raise CorruptDatasetError(f"{path}: 'labels' is not a list of ints") from exc
            if labs.ndim != 1 or not numpy.issubdtype(labs.dtype, numpy.integer):
                raise CorruptDatasetError(f"{path}: 'labels' must be a list of ints, got "
                                          f"{labs.dtype} {labs.shape}")
            if labs.shape[0] != data.shape[0]:
                raise CorruptDatasetError(f"{path}: {data.shape[0]} images but "
                                          f"{labs.shape[0]} labels")
            self._check_labels(labs, path)
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(labs.astype(numpy.int64))
        classes = self._classes_py(folder / "batches.meta")
        return numpy.concatenate(images), numpy.concatenate(labels), classes

    @staticmethod
    def _classes_py(path: Path) -> list[str]:
        if not path.is_file():
            return list(CIFAR10_CLASSES)
        meta = load_pickle(path)
        if not isinstance(meta, dict):
            raise CorruptDatasetError(f"{path}: expected a pickled dict, got {type(meta).__name__}")
        names = [_text(n) for n in _key(meta, "label_names", path)]
        if len(names) != 10:
            raise CorruptDatasetError(f"{path}: expected 10 label names, got {len(names)}")
        return names

    # -- binary layout -------------------------------------------------------
    def _load_bin(self, folder: Path):
        images, labels = [], []
        for path in self._files(folder, ".bin"):
            size = path.stat().st_size
            if size == 0 or size % _RECORD:
                raise CorruptDatasetError(
                    f"{path}: {size} bytes is not a whole number of {_RECORD}-byte records "
                    "(1 label byte + 3072 pixel bytes); the file is truncated or corrupt")
            rec = numpy.fromfile(path, dtype=numpy.uint8)
            if rec.size != size:
                raise CorruptDatasetError(f"{path}: read {rec.size} of {size} bytes")
            rec = rec.reshape(-1, _RECORD)
            labs = rec[:, 0].astype(numpy.int64)
            self._check_labels(labs, path)
            images.append(rec[:, 1:].reshape(-1, 3, 32, 32))
            labels.append(labs)
        classes = self._classes_bin(folder / "batches.meta.txt")
        return numpy.concatenate(images), numpy.concatenate(labels), classes

    @staticmethod
    def _classes_bin(path: Path) -> list[str]:
        if not path.is_file():
            return list(CIFAR10_CLASSES)
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
        if len(names) != 10:
            raise CorruptDatasetError(f"{path}: expected 10 class names, got {len(names)}")
        return names

    @staticmethod
    def _check_labels(labels: numpy.ndarray, path: Path) -> None:
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise CorruptDatasetError(f"{path}: labels must lie in 0..9, got "
                                      f"{labels.min()}..{labels.max()}")
