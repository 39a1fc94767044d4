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
import pickle
from pathlib import Path

import numpy

from .base import ArrayDataset, CorruptDatasetError, DatasetNotFoundError, DownloadError, \
    resolve_root
from .download import download_and_extract
from .safe_pickle import UnsafePickleError, load_pickle

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
_MISSING = object()


def _load(path: Path):
    """Unpickle ``path`` with the restricted unpickler; any failure is a
    :class:`CorruptDatasetError` naming the file."""
    try:
        return load_pickle(path)
    except UnsafePickleError as exc:
        refused = exc.global_name or "a forbidden global"
        raise CorruptDatasetError(
            f"{path}: refused an unsafe pickle (it asks for {refused}; a CIFAR-10 pickle holds only "
            "NumPy arrays, lists, bytes and numbers), so it is not a genuine CIFAR-10 file",
            path=path) from exc
    except pickle.UnpicklingError as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise CorruptDatasetError(f"{path}: truncated or not a CIFAR-10 pickle "
                                  f"({type(cause).__name__}: {cause})", path=path) from exc


def _dict(obj, path: Path) -> dict:
    if not isinstance(obj, dict):
        raise CorruptDatasetError(f"{path}: expected a pickled dict, found "
                                  f"{type(obj).__name__}", path=path)
    return obj


def _key(d: dict, name: str, path: Path, default=_MISSING):
    for k in (name, name.encode("latin-1")):
        if k in d:
            return d[k]
    if default is not _MISSING:
        return default
    raise CorruptDatasetError(f"{path}: required key {name!r} is missing (found keys: "
                              f"{', '.join(sorted(map(repr, d)))})", path=path)


def _text(value, path: Path) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptDatasetError(f"{path}: class name {value!r} is not UTF-8",
                                      path=path) from None
    if isinstance(value, str):
        return value
    raise CorruptDatasetError(f"{path}: class names must be bytes or str, found "
                              f"{type(value).__name__}", path=path)


def _describe(value) -> str:
    if isinstance(value, numpy.ndarray):
        return f"{value.dtype} {value.shape}"
    return type(value).__name__


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

    Missing files raise :class:`DatasetNotFoundError`; a truncated, malformed,
    hostile (unsafe pickle) or inconsistent file raises :class:`CorruptDatasetError`
    with a one-line message ``"<file>: <expected vs found>"``; a dataset is never
    returned partially. Each batch must hold a uint8 ``(N, 3072)`` array and ``N``
    labels in 0..9. ``N`` is :attr:`records_per_batch` (10,000) for every batch when
    ``batches.meta`` says so (``num_cases_per_batch``) or when any batch has that size
    (the official dataset; in the binary layout, the file sizes of all six batches
    are compared); smaller folders with other sizes (subsets, synthetic test data)
    are accepted.
    """

    #: records in each official batch file (data_batch_1..5 and test_batch)
    records_per_batch: int = 10000
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
        meta_path = folder / "batches.meta"
        classes, count = self._meta_py(meta_path)
        batches = [(path, *self._batch_py(path)) for path in self._files(folder, "")]
        if count is not None:
            why = f"num_cases_per_batch in {meta_path}"
        elif any(len(labs) == self.records_per_batch for _, _, labs in batches):
            count, why = self.records_per_batch, "like the other batches of the official CIFAR-10"
        for path, data, labs in batches:
            if count is not None and data.shape[0] != count:
                raise CorruptDatasetError(f"{path}: {data.shape[0]} records, expected {count} "
                                          f"({why})", path=path)
        images = numpy.concatenate([data.reshape(-1, 3, 32, 32) for _, data, _ in batches])
        labels = numpy.concatenate([labs for _, _, labs in batches])
        return images, labels, classes

    def _batch_py(self, path: Path) -> "tuple[numpy.ndarray, numpy.ndarray]":
        batch = _dict(_load(path), path)
        data = _key(batch, "data", path)
        labs = _key(batch, "labels", path)
        if not isinstance(data, numpy.ndarray) or data.dtype != numpy.uint8 or \
                data.ndim != 2 or data.shape[1] != _PIXELS:
            raise CorruptDatasetError(f"{path}: 'data' must be a uint8 (N, {_PIXELS}) array, "
                                      f"found {_describe(data)}", path=path)
        if data.shape[0] == 0:
            raise CorruptDatasetError(f"{path}: holds no images", path=path)
        try:
            labs = numpy.asarray(labs)
        except Exception:  # ragged or exotic objects
            raise CorruptDatasetError(f"{path}: 'labels' must be a list of ints, found "
                                      f"{type(labs).__name__}", path=path) from None
        if labs.ndim != 1 or not numpy.issubdtype(labs.dtype, numpy.integer):
            raise CorruptDatasetError(f"{path}: 'labels' must be a list of ints, found "
                                      f"{labs.dtype} {labs.shape}", path=path)
        if labs.shape[0] != data.shape[0]:
            raise CorruptDatasetError(f"{path}: {data.shape[0]} images but "
                                      f"{labs.shape[0]} labels", path=path)
        self._check_labels(labs, path)
        return data, labs.astype(numpy.int64)

    @staticmethod
    def _meta_py(path: Path) -> "tuple[list[str], int | None]":
        """Class names and ``num_cases_per_batch`` (None when absent) from batches.meta."""
        if not path.is_file():
            return list(CIFAR10_CLASSES), None
        meta = _dict(_load(path), path)
        names = _key(meta, "label_names", path)
        if not isinstance(names, (list, tuple)):
            raise CorruptDatasetError(f"{path}: 'label_names' must be a list of 10 names, "
                                      f"found {type(names).__name__}", path=path)
        if len(names) != 10:
            raise CorruptDatasetError(f"{path}: expected 10 label names, found {len(names)}",
                                      path=path)
        names = [_text(n, path) for n in names]
        count = _key(meta, "num_cases_per_batch", path, None)
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, (int, numpy.integer)) or \
                    count <= 0:
                raise CorruptDatasetError(f"{path}: 'num_cases_per_batch' must be a positive "
                                          f"integer, found {count!r}", path=path)
            count = int(count)
        return names, count

    # -- binary layout -------------------------------------------------------
    def _load_bin(self, folder: Path):
        # the official batches all hold records_per_batch records; once one of them
        # has that size, every batch must (a batch cut at a record boundary is
        # otherwise indistinguishable from a small dataset)
        official = self.records_per_batch * _RECORD
        names = [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]
        sizes = [(folder / n).stat().st_size for n in names if (folder / n).is_file()]
        expected = official if official in sizes else None
        want = (f", expected {expected} bytes = {self.records_per_batch} records"
                if expected is not None else "")
        images, labels = [], []
        for path in self._files(folder, ".bin"):
            size = path.stat().st_size
            if size == 0:
                raise CorruptDatasetError(f"{path}: the file is empty (0 bytes){want}",
                                          path=path)
            if size % _RECORD:
                raise CorruptDatasetError(
                    f"{path}: {size} bytes is not a whole number of {_RECORD}-byte records "
                    f"(1 label byte + 3072 pixel bytes){want}; the file is truncated or corrupt",
                    path=path)
            if expected is not None and size != expected:
                state = "truncated" if size < expected else "longer than a batch (extra data)"
                raise CorruptDatasetError(
                    f"{path}: {size} bytes = {size // _RECORD} records, expected {expected} "
                    f"bytes = {self.records_per_batch} records of {_RECORD} bytes like the "
                    f"other batches of the official CIFAR-10; the file is {state}", path=path)
            rec = numpy.fromfile(path, dtype=numpy.uint8)
            if rec.size != size:
                raise CorruptDatasetError(f"{path}: read {rec.size} of {size} bytes", path=path)
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
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptDatasetError(f"{path}: not UTF-8 text ({exc}), expected 10 class "
                                      "names, one a line", path=path) from None
        names = [n for n in (line.strip() for line in text.splitlines()) if n]
        if len(names) != 10:
            raise CorruptDatasetError(f"{path}: expected 10 class names, found {len(names)}",
                                      path=path)
        return names

    @staticmethod
    def _check_labels(labels: numpy.ndarray, path: Path) -> None:
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise CorruptDatasetError(f"{path}: labels must lie in 0..9, found "
                                      f"{labels.min()}..{labels.max()}", path=path)
