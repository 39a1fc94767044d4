"""Data: datasets (host NumPy arrays), the DataLoader (host gather, device
conversion), the DeviceDataLoader (whole dataset on the device) and
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
    RandomTranslate,
)
from .datasets import CIFAR10, CIFAR10_MEAN, CIFAR10_STD, MNIST, MNIST_MEAN, MNIST_STD, \
    ArrayDataset, FashionMNIST
from .device_loader import DeviceDataLoader
from .loader import DataLoader

__all__ = [
    "augment", "datasets", "DataLoader", "DeviceDataLoader", "ArrayDataset", "CIFAR10", "MNIST", "FashionMNIST",
    "CIFAR10_MEAN", "CIFAR10_STD", "MNIST_MEAN", "MNIST_STD", "Compose", "RandomCrop",
    "RandomHorizontalFlip", "Cutout", "ColorJitter", "RandomRotation", "RandomTranslate",
    "Normalize",
]
