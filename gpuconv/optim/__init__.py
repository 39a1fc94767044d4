"""Optimizers, weight regularizers, gradient clipping and lr schedulers.

Public as ``gpuconv.optim`` (and ``gpuconv.optim.lr_scheduler``).
"""
from . import lr_scheduler
from .adam import Adam, AdamW
from .base import Optimizer
from .clip import clip_grad_norm, grad_norm
from .regularizers import L1, L2, ElasticNet, Regularizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Regularizer", "L1", "L2",
           "ElasticNet", "clip_grad_norm", "grad_norm", "lr_scheduler", "OPTIMIZERS", "get"]

OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get(name: str, params, **kwargs) -> Optimizer:
    """Build an optimizer by (case-insensitive) name: ``get("adam", model, lr=1e-3)``."""
    cls = OPTIMIZERS.get(str(name).lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
    return cls(params, **kwargs)
