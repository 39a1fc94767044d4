"""gpuconv: a from-scratch CNN framework on NumPy (CPU) and CuPy (NVIDIA GPU).

The package's parts, in import order (each imports only from parts before it;
``tests/test_architecture.py`` enforces it):

1. ``backend``    the device boundary: NumPy/CuPy, devices, generators, host memory
2. ``ops``        array kernels: im2col/col2im, pooling, reductions, fused CUDA kernels
3. ``layers``     layers with hand-written forward/backward (+ ``layers.init``, public as ``gpuconv.init``)
4. ``containers`` the plain layer container ``Sequential``
5. ``losses``, ``optim`` (optimizers, ``lr_scheduler``, regularizers, clipping), ``metrics``, ``amp``
6. ``io``         files: the safe .npz, model spec, checkpoints, atomic writes
6b. ``distributed`` data parallelism: communicators (MPI, NCCL), gradient averaging, SyncBN
7. ``training``   the training loop, callbacks, progress, batches
8. ``models``     the trainable ``Sequential``, ``load_model``, presets (``build_preset``)
9. ``data``       datasets (public as ``gpuconv.datasets``), augmentation, data loaders
10. ``recipes``   complete training recipes (``recipes.airbench``)
11. ``cli``, ``bench`` the ``gpuconv`` command and its benchmarks
"""
from . import amp, backend, datasets, distributed, init, layers, losses, metrics, optim
from .backend import get_device, seed
from .layers import no_grad
from .models import Sequential, load_model

__version__ = "0.1.0"

__all__ = ["backend", "distributed", "layers", "init", "datasets", "losses", "metrics", "optim",
           "amp", "Sequential", "load_model", "get_device", "seed", "no_grad", "__version__"]
