"""Data: datasets (host NumPy arrays), the device-side DataLoader and
device-side batch augmentations. Imports only ``gpuconv.backend``.
"""
from . import augment, datasets
from .augment import (
    ColorJitter,
    Compose,
    Cutout,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomRotation,
)
from .datasets import CIFAR10, CIFAR10_MEAN, CIFAR10_STD, MNIST, MNIST_MEAN, MNIST_STD, \
    ArrayDataset, FashionMNIST
from .loader import DataLoader

__all__ = [
    "augment", "datasets", "DataLoader", "ArrayDataset", "CIFAR10", "MNIST", "FashionMNIST",
    "CIFAR10_MEAN", "CIFAR10_STD", "MNIST_MEAN", "MNIST_STD", "Compose", "RandomCrop",
    "RandomHorizontalFlip", "Cutout", "ColorJitter", "RandomRotation", "Normalize",
]
