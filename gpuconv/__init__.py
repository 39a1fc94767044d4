"""gpuconv: a from-scratch CNN framework on NumPy (CPU) and CuPy (NVIDIA GPU).

Package layout follows the dependency direction (each part imports only
from parts before it): ``backend`` -> ``ops`` -> ``layers`` -> ``containers``
-> ``training`` -> ``data`` -> ``cli`` / ``bench``. The public short names
``gpuconv.init``, ``gpuconv.losses``, ``gpuconv.optim``, ``gpuconv.metrics``,
``gpuconv.amp`` and ``gpuconv.datasets`` are aliases of the modules inside those parts.
"""
import sys as _sys

from . import backend, layers
from .backend import get_device, seed
from .data import datasets
from .layers import init, no_grad
from .training import amp, losses, metrics, optim
from .training.model import Sequential
from .training.optim import lr_scheduler as _lr_scheduler
from .training.serialization import load_model

_sys.modules[__name__ + ".init"] = init
_sys.modules[__name__ + ".datasets"] = datasets
_sys.modules[__name__ + ".losses"] = losses
_sys.modules[__name__ + ".metrics"] = metrics
_sys.modules[__name__ + ".amp"] = amp
_sys.modules[__name__ + ".optim"] = optim
_sys.modules[__name__ + ".optim.lr_scheduler"] = _lr_scheduler

__version__ = "0.1.0"

__all__ = ["backend", "layers", "init", "datasets", "losses", "metrics", "optim", "amp",
           "Sequential", "load_model", "get_device", "seed", "no_grad", "__version__"]
