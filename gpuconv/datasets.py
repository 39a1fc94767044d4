"""Datasets, ``gpuconv.datasets``: the public name of :mod:`gpuconv.data.datasets`
(CIFAR-10/100, MNIST/Fashion-MNIST, ArrayDataset, the safe unpickler)."""
from .data.datasets import *  # noqa: F401,F403 - this module is the public face of data.datasets
from .data.datasets import __all__  # noqa: F401
