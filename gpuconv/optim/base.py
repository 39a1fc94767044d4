"""Optimizer base class: parameter list, learning rate, per-parameter state.

State arrays (momentum buffers, Adam moments) live on each parameter's
device, created with that parameter's ``xp`` and dtype on the first
:meth:`Optimizer.step`. A step performs only device-side in-place arithmetic
with Python-float scalars (bias corrections are computed on the host), so it
never synchronises host and device.

``state_dict()`` layout (what ``gpuconv.io.spec`` saves)::

    {"config": {"type": "Adam", "lr": 0.001, ...},   # JSON-serialisable
     "step": 12,                                       # python int
     "state": {"0.exp_avg": numpy.ndarray, ...}}       # "<param index>.<buffer>"

``load_state_dict`` copies each array onto its parameter's device and dtype.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy

from ..backend import Array, device_of, get_array_module, to_device, to_numpy
from ..layers.base import Parameter
from .regularizers import Regularizer

__all__ = ["Optimizer", "as_parameter_list"]


def as_parameter_list(params: Any) -> list[Parameter]:
    """Normalise ``params``: a layer/model (anything with ``.parameters()``) or an iterable of Parameters."""
    if hasattr(params, "parameters") and callable(params.parameters):
        params = params.parameters()
    plist = list(params)
    for p in plist:
        if not isinstance(p, Parameter):
            raise TypeError(f"optimizer: expected gpuconv Parameters, got {type(p).__name__}")
    if len({id(p) for p in plist}) != len(plist):
        raise ValueError("optimizer: a parameter appears more than once")
    return plist


class Optimizer:
    """Base class. Subclasses define ``_buffers`` (state names) and ``_update``.

    Args:
        params: a model/layer or an iterable of :class:`Parameter`.
        lr: learning rate (python float; settable through ``opt.lr``).
        regularizer: optional object with ``apply(params)`` (see
            :mod:`.regularizers`); its gradient is added into ``p.grad`` at the
            start of every :meth:`step`.
    """

    _buffers: tuple[str, ...] = ()

    def __init__(self, params: Any, lr: float, regularizer: Regularizer | None = None) -> None:
        self.params: list[Parameter] = as_parameter_list(params)
        self._lr = check_range(f"{type(self).__name__}: lr", lr, 0.0)
        self.regularizer = regularizer
        self.step_count = 0
        self.state: list[dict[str, Array]] = [{} for _ in self.params]
        self._work: list[dict[int, Array]] = [{} for _ in self.params]
        self._fresh: list[set[str]] = [set() for _ in self.params]  # buffers just zero-filled

    # ---- public API ----------------------------------------------------------
    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = float(value)

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to zero (in place)."""
        for p in self.params:
            p.grad.fill(0)

    def step(self) -> None:
        """Update every parameter from its ``.grad``; no host/device sync."""
        if self.regularizer is not None:
            self.regularizer.apply(self.params)
        self.step_count += 1
        for i, p in enumerate(self.params):
            state = self.state[i]
            if not state or self._state_stale(state, p):
                self._init_state(i, p)
            self._update(p, self.state[i], i)
            self._fresh[i].clear()

    def config(self) -> dict:
        """Hyper-parameters (JSON-serialisable), including ``type`` and ``lr``."""
        return {"type": type(self).__name__, "lr": self._lr}

    def state_dict(self) -> dict:
        """Host copy of the optimizer: ``{"config", "step", "state"}`` (see module doc)."""
        arrays: dict[str, numpy.ndarray] = {}
        for i, state in enumerate(self.state):
            for key, value in state.items():
                arrays[f"{i}.{key}"] = numpy.array(to_numpy(value), copy=True)
        return {"config": self.config(), "step": int(self.step_count), "state": arrays}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore from :meth:`state_dict`; arrays go to each parameter's device and dtype.

        Raises ValueError when the optimizer type, parameter count or a
        buffer's shape does not match.
        """
        config = dict(state_dict.get("config", {}))
        kind = config.pop("type", type(self).__name__)
        if kind != type(self).__name__:
            raise ValueError(f"{type(self).__name__}.load_state_dict: state is from a {kind}")
        previous = self.config()
        previous.pop("type")
        for key, value in config.items():
            self._set_config(key, value)
        try:
            new_state = self._state_from_host(state_dict.get("state", {}))
        except ValueError:
            for key, value in previous.items():
                self._set_config(key, value)
            raise
        self.state = new_state
        self._fresh = [set() for _ in self.params]
        self.step_count = int(state_dict.get("step", 0))

    def _state_from_host(self, arrays: dict) -> list[dict[str, Array]]:
        new_state: list[dict[str, Array]] = [{} for _ in self.params]
        for key, value in arrays.items():
            index, _, name = key.partition(".")
            if not index.isdigit() or int(index) >= len(self.params) \
                    or name not in self._needed_buffers():
                raise ValueError(f"{type(self).__name__}.load_state_dict: unexpected entry "
                                 f"{key!r} for {len(self.params)} parameters")
            p = self.params[int(index)]
            if tuple(value.shape) != p.shape:
                raise ValueError(f"{type(self).__name__}.load_state_dict: {key!r} has shape "
                                 f"{tuple(value.shape)}, parameter {index} has {p.shape}")
            new_state[int(index)][name] = to_device(
                numpy.asarray(value).astype(p.data.dtype), device_of(p.data))
        return new_state

    def __repr__(self) -> str:
        cfg = self.config()
        cfg.pop("type")
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items())
        return f"{type(self).__name__}({len(self.params)} params, {args})"

    # ---- subclass hooks -------------------------------------------------------
    def _update(self, p: Parameter, state: dict[str, Array], index: int) -> None:
        raise NotImplementedError

    def _needed_buffers(self) -> tuple[str, ...]:
        """Names of the state buffers this configuration uses."""
        return self._buffers

    def _set_config(self, key: str, value: Any) -> None:
        if key == "lr":
            self.lr = value
        elif key == "betas":
            setattr(self, key, tuple(float(b) for b in value))
        elif key in self.config():
            setattr(self, key, type(getattr(self, key))(value))
        else:
            raise ValueError(f"{type(self).__name__}.load_state_dict: unknown setting {key!r}")

    # ---- helpers ---------------------------------------------------------------
    def _state_stale(self, state: dict[str, Array], p: Parameter) -> bool:
        """True when state buffers no longer match the parameter (moved, cast, missing)."""
        for name in self._needed_buffers():
            buf = state.get(name)
            if buf is None or buf.dtype != p.data.dtype or type(buf) is not type(p.data):
                return True
        return False

    def _init_state(self, index: int, p: Parameter) -> None:
        """Create missing buffers (zeros) and move existing ones to p's device/dtype."""
        xp = get_array_module(p.data)
        state = self.state[index]
        device = device_of(p.data)
        for name in self._needed_buffers():
            buf = state.get(name)
            if buf is None:
                state[name] = xp.zeros_like(p.data)
                self._fresh[index].add(name)
            elif buf.dtype != p.data.dtype or type(buf) is not type(p.data):
                state[name] = to_device(buf, device).astype(p.data.dtype, copy=False)
        self._work[index] = {}

    def _grad(self, p: Parameter, index: int, weight_decay: float) -> Array:
        """``p.grad`` (+ ``weight_decay * p.data`` in a reused scratch buffer; p.grad untouched)."""
        if not weight_decay:
            return p.grad
        work = self._scratch(p, index)
        get_array_module(p.data).multiply(p.data, weight_decay, out=work)
        work += p.grad
        return work

    def _scratch(self, p: Parameter, index: int, slot: int = 0) -> Array:
        """A reusable uninitialised buffer like ``p.data`` (not part of the saved state)."""
        work = self._work[index].get(slot)
        if work is None or work.dtype != p.data.dtype or type(work) is not type(p.data) \
                or work.shape != p.data.shape:
            work = get_array_module(p.data).empty_like(p.data)
            self._work[index][slot] = work
        return work


def check_range(name: str, value: float, low: float, high: float | None = None,
                open_high: bool = False) -> float:
    """Validate a hyper-parameter: a finite number with ``low <= value`` and
    ``value < high`` / ``<= high`` (NaN and infinities are refused: with them every
    update is NaN). Returns it as a float; ValueError otherwise."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    bad = not math.isfinite(value) or value < low or \
        (high is not None and (value >= high if open_high else value > high))
    if bad:
        bound = "" if high is None else (f" and < {high}" if open_high else f" and <= {high}")
        raise ValueError(f"{name} must be a finite number >= {low}{bound}, got {value}")
    return value
