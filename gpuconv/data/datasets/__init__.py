"""Datasets: CIFAR-10 (both official layouts, optional download), MNIST-style
IDX files and in-memory arrays. Every dataset exposes host (NumPy) arrays
``.images`` (N, C, H, W) and ``.labels`` int64 (N,), plus ``.classes``.

Public alias: ``gpuconv.datasets``.
"""
from .base import (
    ArrayDataset,
    CorruptDatasetError,
    DatasetNotFoundError,
    DownloadError,
    default_root,
)
from .cifar import CIFAR10, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from .mnist import FASHION_MNIST_CLASSES, MNIST, FashionMNIST, read_idx
from .safe_pickle import SafeUnpickler, UnsafePickleError, load_pickle

#: Per-channel MNIST mean/std in [0, 1] pixel units.
MNIST_MEAN: tuple[float] = (0.1307,)
MNIST_STD: tuple[float] = (0.3081,)

__all__ = [
    "ArrayDataset", "CIFAR10", "MNIST", "FashionMNIST",
    "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_CLASSES", "MNIST_MEAN", "MNIST_STD",
    "FASHION_MNIST_CLASSES", "default_root", "read_idx", "load_pickle", "SafeUnpickler",
    "DatasetNotFoundError", "CorruptDatasetError", "DownloadError", "UnsafePickleError",
]
