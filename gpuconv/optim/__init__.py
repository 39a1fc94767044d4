"""Optimizers, weight regularizers, gradient clipping and lr schedulers.

Public as ``gpuconv.optim`` (and ``gpuconv.optim.lr_scheduler``). Optimizers
take torch-style parameter groups (see :mod:`.base`); frozen parameters
(``requires_grad`` False, :func:`is_trainable`) are skipped by optimizers,
regularizers and clipping. :func:`airbench_sgd_hyperparameters` maps
airbench's per-1024-examples lr / weight decay onto Nesterov SGD groups.
"""
from . import lr_scheduler
from .adam import Adam, AdamW
from .base import Optimizer
from .clip import clip_grad_norm, grad_norm
from .params import is_trainable
from .regularizers import L1, L2, ElasticNet, Regularizer
from .rmsprop import RMSprop
from .sgd import SGD, airbench_sgd_hyperparameters

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Regularizer", "L1", "L2",
           "ElasticNet", "clip_grad_norm", "grad_norm", "is_trainable",
           "airbench_sgd_hyperparameters", "lr_scheduler", "OPTIMIZERS", "get"]

OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get(name: str, params, **kwargs) -> Optimizer:
    """Build an optimizer by (case-insensitive) name: ``get("adam", model, lr=1e-3)``."""
    cls = OPTIMIZERS.get(str(name).lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
    return cls(params, **kwargs)
