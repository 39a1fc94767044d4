"""Backend: the one place that knows about NumPy vs CuPy.

Public helpers:

- :func:`get_device` -- resolve ``"auto" | "cpu" | "cuda" | "cuda:N"`` (default
  from ``GPUCONV_DEVICE``).
- :func:`get_array_module` -- the ``xp`` module of some arrays.
- :func:`to_device`, :func:`to_numpy`, :func:`device_of`, :func:`same_device` -- move
  and inspect arrays; :func:`device_context_of` -- make an array's device current.
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
    current_device_index,
    device_context_of,
    cuda_unavailable_reason,
    device_of,
    get_array_module,
    get_device,
    on_array_device,
    register_backend,
    same_device,
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
    "current_device_index", "device_context_of", "on_array_device", "same_device",
    "cuda_unavailable_reason", "device_of", "get_array_module", "get_device",
    "register_backend", "to_device", "to_numpy", "unregister_backend",
    "keep_freed_memory", "epoch_order", "epoch_seed", "generator", "get_seed", "get_state",
    "host_generator", "reseed_for_epoch", "seed", "set_state", "num_threads", "own_cpu_threads",
]
