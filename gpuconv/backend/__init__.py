"""Backend: the one place that knows about NumPy vs CuPy.

Public helpers:

- :func:`get_device` -- resolve ``"auto" | "cpu" | "cuda" | "cuda:N"`` (default
  from ``GPUCONV_DEVICE``).
- :func:`get_array_module` -- the ``xp`` module of some arrays.
- :func:`to_device`, :func:`to_numpy`, :func:`device_of` -- move and inspect arrays.
- :func:`seed`, :func:`generator` -- seeded per-device random generators;
  :func:`reseed_for_epoch` restarts the non-CPU ones per epoch (resumable).
- :func:`num_threads`, :func:`own_cpu_threads` -- gpuconv's CPU worker threads
  (:mod:`.threads`).
"""
from .devices import (
    Array,
    Backend,
    Device,
    DeviceUnavailableError,
    backend_of_module,
    cuda_is_available,
    cuda_unavailable_reason,
    device_of,
    get_array_module,
    get_device,
    register_backend,
    to_device,
    to_numpy,
    unregister_backend,
)
from .host_memory import keep_freed_memory
from .random import (epoch_order, epoch_seed, generator, get_seed, get_state, host_generator,
                     reseed_for_epoch, seed, set_state)
from .threads import num_threads, own_cpu_threads

__all__ = [
    "Array", "Backend", "Device", "DeviceUnavailableError", "backend_of_module", "cuda_is_available",
    "cuda_unavailable_reason", "device_of", "get_array_module", "get_device",
    "register_backend", "to_device", "to_numpy", "unregister_backend",
    "keep_freed_memory", "epoch_order", "epoch_seed", "generator", "get_seed", "get_state",
    "host_generator", "reseed_for_epoch", "seed", "set_state", "num_threads", "own_cpu_threads",
]
