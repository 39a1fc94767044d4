"""The layer library. Every layer: ``forward(x)``, ``backward(dy)``, ``parameters()``,
``train()`` / ``eval()``, ``to(device)``, ``astype(dtype)``."""
from .activations import GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer, Parameter, is_grad_enabled, no_grad
from .conv import Conv1D, Conv2D
from .dense import Dense
from .dropout import Dropout, Dropout2d
from .normalization import BatchNorm1d, BatchNorm2d
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .reshape import Flatten
from .sync_batchnorm import SyncBatchNorm1d, SyncBatchNorm2d
from .residual import Residual
from .scale import Multiply

__all__ = [
    "Layer", "Parameter", "Conv2D", "Conv1D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D",
    "Flatten", "Dense", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Dropout",
    "Dropout2d", "BatchNorm1d", "BatchNorm2d", "SyncBatchNorm1d", "SyncBatchNorm2d",
    "Residual", "GELU", "Multiply", "no_grad", "is_grad_enabled",
]

LAYER_TYPES = {name: globals()[name] for name in __all__
               if name not in ("Layer", "Parameter", "no_grad", "is_grad_enabled")}
