"""Training recipes: complete, published ways to train a preset, each built from
gpuconv's public pieces so every piece stays usable alone.

- :mod:`.airbench`: Keller Jordan's airbench94 CIFAR-10 recipe (94 % in 9.9
  epochs on the original data): whitening, Nesterov SGD with airbench's
  decoupled hyperparameters, label smoothing, lookahead, translate + alternating
  flip, test-time augmentation.
"""
from . import airbench

__all__ = ["airbench"]
