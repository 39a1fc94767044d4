"""gpuconv: a from-scratch CNN framework on NumPy (CPU) and CuPy (NVIDIA GPU)."""
from . import backend, layers
from .backend import get_device, seed
from .containers import Sequential

__version__ = "0.1.0"

__all__ = ["backend", "layers", "Sequential", "get_device", "seed", "__version__"]
