"""Parameter and Layer: the contract every layer follows.

A layer's ``forward(x)`` returns ``y`` and remembers what its backward pass
needs; ``backward(dy)`` returns ``dx`` and *adds* into each parameter's
``.grad``. The array module ``xp`` always comes from the layer's parameters
or inputs (``gpuconv.backend.get_array_module``), never from a global, so a
CPU model and a GPU model can live in one process.

Every layer's ``forward``/``backward``/``backward_params`` runs with its
input's device current (:func:`gpuconv.backend.device_context_of`, entered
once per call by the base class): CuPy creates arrays and launches kernels on
the current device, so without it a model on ``cuda:1`` would compute on GPU 0.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from types import ModuleType
from typing import Any, Iterator

import numpy

from ..backend import (Array, Device, device_context_of, device_of, get_array_module, get_device,
                       same_device, to_device)


_grad_mode = threading.local()


def is_grad_enabled() -> bool:
    """False inside :func:`no_grad` (in this thread), else True."""
    return getattr(_grad_mode, "enabled", True)


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Forward passes in this block are for inference only, like ``torch.no_grad``.

    Layers whose backward state costs work or memory skip it: MaxPool2D
    computes no argmax (measured: half its forward time) and BatchNorm keeps
    no copy of its input; a ``backward`` through them after such a forward
    raises RuntimeError. BatchNorm in training mode still updates its running
    statistics. Thread-local; ``evaluate`` and ``predict`` run in it.
    """
    previous = is_grad_enabled()
    _grad_mode.enabled = False
    try:
        yield
    finally:
        _grad_mode.enabled = previous


class Parameter:
    """A learnable array ``data`` with its gradient ``grad`` (same shape, dtype, device).

    ``requires_grad`` (default True): False marks a frozen parameter
    (:meth:`Layer.freeze`). Backward passes then add nothing into its ``grad``,
    which stays an all-zero array (it is kept, not set to None, so code that walks
    every parameter's ``.grad`` keeps working) and skip the work that only it
    needs (a conv/dense weight-gradient GEMM, a bias sum). Optimizers must skip
    frozen parameters (use :meth:`Layer.trainable_parameters`): momentum or weight
    decay would otherwise still move them.
    """

    __slots__ = ("data", "grad", "name", "requires_grad")

    def __init__(self, data: Array, name: str = "", requires_grad: bool = True) -> None:
        self.data = data
        with device_context_of(data):
            self.grad = get_array_module(data).zeros_like(data)
        self.name = name
        self.requires_grad = bool(requires_grad)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def zero_grad(self) -> None:
        with device_context_of(self.grad):
            self.grad.fill(0)

    def to(self, device: "str | Device") -> "Parameter":
        self.data = to_device(self.data, device)
        self.grad = to_device(self.grad, device)
        return self

    def astype(self, dtype: Any) -> "Parameter":
        with device_context_of(self.data):
            self.data = self.data.astype(dtype)
            self.grad = self.grad.astype(dtype)
        return self

    def __repr__(self) -> str:
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return (f"Parameter({self.name or '?'}, shape={self.shape}, dtype={self.data.dtype}"
                f"{frozen})")


def describe(array: Any) -> str:
    """Short description of an array for error messages."""
    shape = getattr(array, "shape", None)
    dtype = getattr(array, "dtype", None)
    try:
        where = f" on {device_of(array)}"
    except TypeError:
        where = ""
    return f"{type(array).__module__}.{type(array).__name__}{where} shape={shape} dtype={dtype}"


def _on_argument_device(method):
    """Wrap a forward/backward so it runs with its array argument's device current."""
    @functools.wraps(method)
    def on_device(self, x, *args, **kwargs):
        with device_context_of(x):
            return method(self, x, *args, **kwargs)
    on_device.__wrapped_on_device__ = True
    return on_device


_DEVICE_BOUNDARY = ("forward", "backward", "backward_params")


class Layer:
    """Base class of all layers.

    Subclasses implement ``forward``/``backward``; register learnable arrays
    as :class:`Parameter` attributes (see :meth:`parameters`) and
    non-learnable state (BatchNorm running statistics) by listing their
    attribute names in ``_buffer_names``. ``config()`` returns the keyword
    arguments that rebuild the layer (used for saving models). Parameters can be
    frozen (:meth:`freeze`, :meth:`unfreeze`, :meth:`trainable_parameters`,
    :meth:`frozen_names`); that state is kept outside ``config()``.
    """

    _buffer_names: tuple[str, ...] = ()
    _compute_dtype: numpy.dtype | None = None  # mixed-precision policy (set_compute_dtype)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _DEVICE_BOUNDARY:
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "__wrapped_on_device__", False):
                setattr(cls, name, _on_argument_device(method))

    def __init__(self) -> None:
        self.training = True

    # ---- to be implemented by subclasses -----------------------------------
    def forward(self, x: Array) -> Array:
        raise NotImplementedError

    def backward(self, dy: Array) -> Array:
        raise NotImplementedError

    def config(self) -> dict:
        """Constructor keyword arguments (JSON-serialisable) that rebuild this layer."""
        return {}

    def backward_params(self, dy: Array) -> None:
        """Like :meth:`backward` but without returning the input gradient.

        Used for the first layer of a network, whose input gradient nobody
        needs; layers where it is expensive (Conv2D, Conv1D, Dense) skip it.
        """
        self.backward(dy)

    # ---- shared machinery ---------------------------------------------------
    def __call__(self, x: Array) -> Array:
        return self.forward(x)

    @property
    def name(self) -> str:
        return type(self).__name__

    def children(self) -> list["Layer"]:
        """Sub-layers (for containers); leaf layers have none."""
        return []

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for attr, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + attr, value
        for i, child in enumerate(self.children()):
            yield from child.named_parameters(f"{prefix}{i}.")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    # ---- frozen parameters ------------------------------------------------------
    def trainable_parameters(self) -> list[Parameter]:
        """The parameters with ``requires_grad`` True (what an optimizer should update)."""
        return [p for p in self.parameters() if p.requires_grad]

    def frozen_names(self) -> list[str]:
        """Names (as in :meth:`named_parameters`, e.g. ``"weight"``, ``"0.bias"``) of the
        frozen parameters of this layer and its sub-layers, in parameter order.

        Frozen state is not part of :meth:`config`: whoever saves a model stores this
        list next to the config and calls ``freeze(*names)`` on the rebuilt layer.
        """
        return [name for name, p in self.named_parameters() if not p.requires_grad]

    def freeze(self, *names: str) -> "Layer":
        """Mark parameters as not trainable (``requires_grad = False``); returns self.

        ``names``: parameter names as :meth:`named_parameters` gives them (``"weight"``,
        ``"bias"``; dotted for containers: ``"0.weight"``, ``"body.1.bias"``); none =
        every parameter of this layer and its sub-layers. Their ``grad`` is zeroed
        and stays zero: backward skips their gradients (see :class:`Parameter`).
        Raises KeyError for an unknown name (listing the known ones).
        """
        for p in self._parameters_named(names, "freeze"):
            p.requires_grad = False
            p.zero_grad()
        return self

    def unfreeze(self, *names: str) -> "Layer":
        """Undo :meth:`freeze` (same ``names`` rules; none = all); returns self."""
        for p in self._parameters_named(names, "unfreeze"):
            p.requires_grad = True
        return self

    def _parameters_named(self, names: tuple, what: str) -> list[Parameter]:
        named = dict(self.named_parameters())
        if not names:
            return list(named.values())
        bad = [n for n in names if not isinstance(n, str)]
        if bad:
            raise TypeError(f"{self.name}.{what}: parameter names must be strings, got {bad!r}")
        unknown = [n for n in names if n not in named]
        if unknown:
            raise KeyError(f"{self.name}.{what}: unknown parameter name(s) {unknown}; "
                           f"known: {list(named)}")
        return [named[n] for n in names]

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Array]]:
        for attr in self._buffer_names:
            yield prefix + attr, getattr(self, attr)
        for i, child in enumerate(self.children()):
            yield from child.named_buffers(f"{prefix}{i}.")

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode: bool = True) -> "Layer":
        self.training = mode
        for child in self.children():
            child.train(mode)
        return self

    def eval(self) -> "Layer":
        return self.train(False)

    def _map_arrays(self, fn) -> None:
        def on_its_device(a: Array) -> Array:
            with device_context_of(a):
                return fn(a)
        for attr, value in vars(self).items():
            if isinstance(value, Parameter):
                value.data = on_its_device(value.data)
                value.grad = on_its_device(value.grad)
        for attr in self._buffer_names:
            setattr(self, attr, on_its_device(getattr(self, attr)))
        self.clear_cache()
        for child in self.children():
            child._map_arrays(fn)

    def to(self, device: "str | Device") -> "Layer":
        """Move parameters and buffers to ``device`` ("cpu", "cuda:0", ...); returns self."""
        target = get_device(device)
        self._map_arrays(lambda a: to_device(a, target))
        return self

    def astype(self, dtype: Any) -> "Layer":
        """Cast parameters and buffers to a floating dtype (float32 or float64)."""
        dtype = numpy.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"{self.name}.astype: expected a floating dtype, got {dtype}")
        self._map_arrays(lambda a: a.astype(dtype, copy=False))
        return self

    def clear_cache(self) -> None:
        """Drop arrays remembered for the backward pass (frees memory)."""
        for attr in [a for a in vars(self) if a.startswith("_cache")]:
            setattr(self, attr, None)
        for child in self.children():
            child.clear_cache()

    @property
    def device(self) -> Device | None:
        for p in self.parameters():
            return device_of(p.data)
        for _, b in self.named_buffers():
            return device_of(b)
        return None

    @property
    def dtype(self) -> numpy.dtype | None:
        for p in self.parameters():
            return p.data.dtype
        return None

    # ---- mixed precision (see gpuconv.amp) --------------------------
    @property
    def compute_dtype(self) -> numpy.dtype | None:
        """The dtype this layer computes in under a mixed-precision policy, or None
        (the default: compute in the parameters' dtype)."""
        return self._compute_dtype

    def set_compute_dtype(self, dtype: Any) -> "Layer":
        """Set the compute dtype policy of this layer and all its sub-layers; returns self.

        ``dtype``: a floating dtype such as ``"float16"``, or None to turn the
        policy off. Parameters keep their dtype (they are the float32 master
        weights). Under a float16 policy the GEMM layers (Conv2D, Conv1D,
        Dense) cast their input and a copy of their weights to float16 and
        return float16; BatchNorm accepts float16, normalises in its
        parameters' dtype and returns float16; parameter gradients stay in
        the parameters' dtype. See :mod:`gpuconv.amp`.
        """
        if dtype is not None:
            dtype = numpy.dtype(dtype)
            if dtype.kind != "f":
                raise TypeError(f"{self.name}.set_compute_dtype: expected a floating dtype or "
                                f"None, got {dtype}")
        self._compute_dtype = dtype
        for child in self.children():
            child.set_compute_dtype(dtype)
        return self

    def _autocast_dtype(self) -> numpy.dtype | None:
        """The compute dtype when it differs from the parameters' dtype, else None."""
        dtype = self._compute_dtype
        if dtype is None:
            return None
        params = self.parameters()
        if not params or params[0].data.dtype == dtype:
            return None
        return dtype

    def state_dict(self) -> dict[str, Array]:
        """Parameters and buffers by dotted name (arrays on the layer's device)."""
        state = {name: p.data for name, p in self.named_parameters()}
        state.update(dict(self.named_buffers()))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy arrays into parameters/buffers (host or device arrays accepted).

        Raises KeyError for missing/unexpected names and ValueError for shape
        mismatches, naming the entry.
        """
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"{self.name}.load_state_dict: missing {missing}, unexpected {unexpected}")
        for key, current in own.items():
            value = state[key]
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(f"{self.name}.load_state_dict: {key!r} expects shape "
                                 f"{tuple(current.shape)}, got {tuple(value.shape)}")
            with device_context_of(current):
                current[...] = to_device(value, device_of(current)).astype(current.dtype,
                                                                           copy=False)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{self.name}({args})"

    # ---- input checks shared by layers --------------------------------------
    def _check_input(self, x: Array, ndim: int, channels: int | None = None,
                     layout: str = "") -> ModuleType:
        """Validate ``x`` against this layer's parameters; return its ``xp``.

        Raises ValueError for a wrong rank or channel count and TypeError
        when ``x`` lives on another device or has another dtype than the
        layer's parameters. Under a mixed-precision policy
        (:meth:`set_compute_dtype`) the compute dtype is accepted too.
        """
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) != ndim:
            raise ValueError(f"{self!r}: expected a {ndim}-D input {layout}, "
                             f"got {describe(x)}")
        if channels is not None and shape[1] != channels:
            raise ValueError(f"{self!r}: expected input shape {layout} with "
                             f"{channels} channels/features on axis 1, got shape {tuple(shape)}")
        params = self.parameters()
        if params:
            p = params[0].data
            try:
                xp = get_array_module(x, p)
            except TypeError:
                xp = None
            if xp is None or not same_device(x, p):
                raise TypeError(f"{self!r}: input is {describe(x)} but the parameters are "
                                f"{describe(p)}; move the input or the layer with .to(device)") from None
            if x.dtype != p.dtype and (self._compute_dtype is None
                                       or x.dtype != self._compute_dtype):
                raise TypeError(f"{self!r}: input dtype {x.dtype} does not match parameter "
                                f"dtype {p.dtype}; cast with .astype() first")
            return xp
        return get_array_module(x)
