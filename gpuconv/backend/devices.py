"""The device boundary: which array module (NumPy or CuPy) an array lives on.

Everything in gpuconv that creates arrays asks this module for the array
module (``xp``) of its inputs or parameters; nothing imports CuPy directly.
A device is named ``"cpu"`` (NumPy) or ``"cuda"`` / ``"cuda:N"`` (CuPy).
Further array backends (the test suite's strict fake CuPy) can be registered
with :func:`register_backend`.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy

Array = Any  # numpy.ndarray or cupy.ndarray (or a registered array type)


@dataclass(frozen=True)
class Backend:
    """One array library: its module, array type and host transfers.

    ``to_host(a)`` returns a numpy.ndarray; ``from_host(a, index)`` puts a
    numpy array on device ``index`` of this backend. ``device_context(index)``
    makes device ``index`` current (new arrays and kernels go there, as with
    ``cupy.cuda.Device``); ``current_index()`` says which one is.
    """

    name: str
    xp: ModuleType
    array_type: type
    to_host: Callable[[Array], numpy.ndarray]
    from_host: Callable[[numpy.ndarray, int], Array]
    device_index: Callable[[Array], int] = field(default=lambda a: 0)
    device_context: Callable[[int], contextlib.AbstractContextManager] = field(
        default=lambda index: contextlib.nullcontext())
    available: Callable[[], bool] = field(default=lambda: True)
    current_index: Callable[[], int] = field(default=lambda: 0)


_BACKENDS: dict[str, Backend] = {}
_BY_MODULE: dict[int, Backend] = {}
_BY_TYPE: dict[type, Backend] = {}


def register_backend(backend: Backend) -> None:
    """Make a backend known under ``backend.name`` (replacing one of that name)."""
    old = _BACKENDS.get(backend.name)
    if old is not None:
        _BY_MODULE.pop(id(old.xp), None)
        _BY_TYPE.pop(old.array_type, None)
    _BACKENDS[backend.name] = backend
    _BY_MODULE[id(backend.xp)] = backend
    _BY_TYPE[backend.array_type] = backend


def unregister_backend(name: str) -> None:
    backend = _BACKENDS.pop(name, None)
    if backend is not None:
        _BY_MODULE.pop(id(backend.xp), None)
        _BY_TYPE.pop(backend.array_type, None)


register_backend(Backend(
    name="cpu", xp=numpy, array_type=numpy.ndarray,
    to_host=lambda a: a,
    from_host=lambda a, index: numpy.ascontiguousarray(a),
))

_cupy: ModuleType | None = None
_cupy_import_error: str | None = None


def _load_cupy() -> ModuleType | None:
    """Import CuPy once; remember why it failed so errors can say so."""
    global _cupy, _cupy_import_error
    if _cupy is not None or _cupy_import_error is not None:
        return _cupy
    try:
        import cupy  # noqa: PLC0415 - the one guarded import of CuPy
    except Exception as exc:  # ImportError, or a broken CUDA install
        _cupy_import_error = f"cupy could not be imported ({type(exc).__name__}: {exc})"
        return None
    _cupy = cupy

    def cuda_available() -> bool:
        try:
            return cupy.cuda.runtime.getDeviceCount() > 0
        except Exception:
            return False

    def from_host(a: numpy.ndarray, index: int) -> Array:
        with cupy.cuda.Device(index):
            return cupy.asarray(a)

    register_backend(Backend(
        name="cuda", xp=cupy, array_type=cupy.ndarray,
        to_host=lambda a: a.get(),
        from_host=from_host,
        device_index=lambda a: a.device.id,
        device_context=lambda index: cupy.cuda.Device(index),
        available=cuda_available,
        current_index=lambda: cupy.cuda.runtime.getDevice(),
    ))
    return cupy


def cuda_is_available() -> bool:
    """True when CuPy imports and at least one CUDA device answers."""
    if _load_cupy() is None:
        return False
    return _BACKENDS["cuda"].available()


def cuda_unavailable_reason() -> str:
    """A one-line reason why CUDA cannot be used here ('' when it can)."""
    if _load_cupy() is None:
        return _cupy_import_error or "cupy is not installed"
    if not _BACKENDS["cuda"].available():
        return "cupy is installed but no CUDA device answers"
    return ""


class DeviceUnavailableError(RuntimeError):
    """A CUDA device was asked for where CUDA is not usable.

    ``reason`` is the one-line cause (:func:`cuda_unavailable_reason`) without
    advice, so that callers such as the command line can give their own
    (a flag instead of a keyword argument).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Device:
    """A place arrays live: a backend name plus a device index."""

    kind: str
    index: int = 0

    @property
    def backend(self) -> Backend:
        return _BACKENDS[self.kind]

    @property
    def xp(self) -> ModuleType:
        return self.backend.xp

    def context(self) -> contextlib.AbstractContextManager:
        """Context that makes this device current (a no-op on the CPU)."""
        return self.backend.device_context(self.index)

    def __str__(self) -> str:
        return self.kind if self.kind == "cpu" else f"{self.kind}:{self.index}"


def _parse(spec: str) -> Device:
    spec = spec.strip().lower()
    kind, _, index = spec.partition(":")
    if index and not index.isdigit():
        raise ValueError(f"device {spec!r}: index must be a non-negative integer")
    return Device(kind, int(index) if index else 0)


_notice_printed = False


def get_device(spec: "str | Device | None" = None) -> Device:
    """Resolve a device spec to a :class:`Device`.

    ``spec`` is ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, the name of a
    registered backend, a Device, or None (read ``GPUCONV_DEVICE``, default
    ``"auto"``). ``auto`` picks CUDA when it answers, else the CPU with a
    one-line notice on stderr. Asking for CUDA where there is none raises
    :class:`DeviceUnavailableError` (a RuntimeError) with the reason.
    """
    global _notice_printed
    if isinstance(spec, Device):
        return spec
    if spec is None:
        spec = os.environ.get("GPUCONV_DEVICE", "auto") or "auto"
    if spec.strip().lower() == "auto":
        if cuda_is_available():
            return Device("cuda", 0)
        if not _notice_printed:
            print(f"gpuconv: using the CPU (NumPy); {cuda_unavailable_reason()}",
                  file=sys.stderr)
            _notice_printed = True
        return Device("cpu", 0)
    device = _parse(spec)
    if device.kind == "cuda":
        if not cuda_is_available():
            reason = cuda_unavailable_reason()
            raise DeviceUnavailableError(
                f"device {spec!r} was requested but CUDA is not usable: {reason}. Use "
                "device='cpu' or install gpuconv[cuda12] on a machine with an NVIDIA GPU.",
                reason)
        count = _cupy.cuda.runtime.getDeviceCount()
        if device.index >= count:
            raise RuntimeError(f"device {spec!r} was requested but only {count} "
                               "CUDA device(s) exist")
        return device
    if device.kind not in _BACKENDS:
        raise ValueError(f"unknown device {spec!r}; expected 'auto', 'cpu', "
                         "'cuda' or 'cuda:N'")
    if device.kind == "cpu" and device.index != 0:
        raise ValueError(f"device {spec!r}: the CPU has no index other than 0; use 'cpu'")
    return device


def _backend_of(array: Array) -> Backend | None:
    backend = _BY_TYPE.get(type(array))
    if backend is None:
        for array_type, candidate in _BY_TYPE.items():
            if isinstance(array, array_type):
                return candidate
        if type(array).__module__.startswith("cupy") and _load_cupy() is not None:
            return _BY_TYPE.get(type(array))
    return backend


def get_array_module(*arrays: Any) -> ModuleType:
    """The array module (numpy, cupy, ...) of the given arrays.

    Non-array arguments (Python scalars, None) are ignored; with no array
    among them, numpy is returned. Raises TypeError if the arrays live in
    different array modules, since mixing them is always a bug.
    """
    found: Backend | None = None
    first: Any = None
    for a in arrays:
        if a is None or isinstance(a, (int, float, bool, complex, numpy.generic)):
            continue
        backend = _backend_of(a)
        if backend is None:
            continue
        if found is not None and backend is not found:
            raise TypeError(
                f"arrays of different devices were mixed: {type(first).__module__}."
                f"{type(first).__name__} and {type(a).__module__}.{type(a).__name__}; "
                "move them to one device first (gpuconv.backend.to_device)")
        if found is None:
            found, first = backend, a
    return found.xp if found is not None else numpy


def device_of(array: Array) -> Device:
    """The :class:`Device` an array lives on."""
    backend = _backend_of(array)
    if backend is None:
        raise TypeError(f"not an array gpuconv knows: {type(array).__name__}")
    return Device(backend.name, backend.device_index(array))


_NO_CONTEXT = contextlib.nullcontext()


def device_context_of(*arrays: Any) -> contextlib.AbstractContextManager:
    """The context that makes the device of the first device array in ``arrays`` current.

    CuPy allocates new arrays and launches kernels on the *current* device,
    not on their inputs' one; entering this at an API boundary (a layer's
    forward/backward, an optimizer step, a loss) makes a model on ``cuda:1``
    work whatever device is current outside. A shared no-op context on the
    CPU, for non-arrays and for backends without devices.
    """
    for a in arrays:
        backend = _BY_TYPE.get(type(a))
        if backend is None:
            if a is None or isinstance(a, (int, float, bool, numpy.ndarray, numpy.generic)):
                continue
            backend = _backend_of(a)
            if backend is None:
                continue
        if backend.name != "cpu":  # host arrays among the arguments: look further
            return backend.device_context(backend.device_index(a))
    return _NO_CONTEXT


def on_array_device(fn: Callable) -> Callable:
    """Decorator for public functions: run ``fn`` with the device of its first array
    argument current (see :func:`device_context_of`)."""
    @functools.wraps(fn)
    def on_device(*args: Any, **kwargs: Any) -> Any:
        with device_context_of(*args, *kwargs.values()):
            return fn(*args, **kwargs)
    return on_device


def same_device(a: Array, b: Array) -> bool:
    """True when two arrays live on one device (same backend and device index)."""
    if type(a) is not type(b):
        return device_of(a) == device_of(b)
    backend = _BY_TYPE.get(type(a))
    return backend is None or backend.name == "cpu" or \
        backend.device_index(a) == backend.device_index(b)


def current_device_index(xp: ModuleType) -> int:
    """The index of the current device of array module ``xp`` (0 on the CPU)."""
    return backend_of_module(xp).current_index()


def backend_of_module(xp: ModuleType) -> Backend:
    backend = _BY_MODULE.get(id(xp))
    if backend is None:
        raise TypeError(f"not a registered array module: {xp!r}")
    return backend


def to_numpy(array: Array) -> numpy.ndarray:
    """Copy an array to the host as a numpy.ndarray (a no-op for NumPy)."""
    backend = _backend_of(array)
    if backend is None:
        return numpy.asarray(array)
    return backend.to_host(array)


def to_device(array: Array, device: "str | Device") -> Array:
    """Return ``array`` on ``device``, copying only when it lives elsewhere."""
    target = get_device(device)
    current = _backend_of(array)
    if current is not None and current.name == target.kind and \
            current.device_index(array) == target.index:
        return array
    host = to_numpy(array)
    return target.backend.from_host(host, target.index)


def iter_backends() -> Iterator[Backend]:
    return iter(list(_BACKENDS.values()))
