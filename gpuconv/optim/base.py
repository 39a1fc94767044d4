"""Optimizer base class: torch-style parameter groups, per-parameter state.

Parameter groups
----------------
``params`` is a model/layer, an iterable of :class:`Parameter`, or (as in
torch) a list of dicts, each ``{"params": <model | Parameter | iterable>,
<hyper-parameter>: value, ...}``::

    SGD([{"params": bn_biases, "lr": 0.64, "weight_decay": 0.0},
         {"params": others}], lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

A group's hyper-parameters default to the constructor's (``optimizer.defaults``).
``optimizer.param_groups`` is the list of group dicts (torch's shape: ``"params"``
is a list of Parameters, every hyper-parameter is present); change a group's
value by assignment (``opt.param_groups[1]["lr"] = 0.1``), which is how
:mod:`.lr_scheduler` schedules every group's lr from its own initial lr. Besides
the hyper-parameters a group may carry ``"name"`` (any JSON value, a label) and
``"initial_lr"`` (set by schedulers, as in torch); other keys raise ValueError
(torch keeps them silently; here a misspelt ``"weight_decya"`` is an error).
Do not edit a group's ``"params"`` list in place; use :meth:`Optimizer.add_param_group`.

``optimizer.lr`` is the first group's lr. Setting it sets the first group's lr
and multiplies every other group's lr by the same factor, so the groups'
ratios are kept (e.g. airbench's 64x lr of BatchNorm biases); with one group
it simply is the lr.

Frozen parameters (``requires_grad`` False, see :mod:`.params`) are skipped
by :meth:`Optimizer.step`: no update and no state; state a parameter already
has is kept (and saved) while it is frozen.

State arrays (momentum buffers, Adam moments) live on each parameter's
device, created with that parameter's ``xp`` and dtype on its first update.
A step performs only device-side in-place arithmetic with Python-float
scalars (bias corrections are computed on the host), so it never
synchronises host and device.

``state_dict()`` layout (what ``gpuconv.io.checkpoint`` saves)::

    {"config": {"type": "Adam", "lr": 0.001, ...},   # constructor defaults, JSON
     "step": 12,                                       # number of step() calls
     "state": {"0.exp_avg": numpy.ndarray, ...},       # "<flat index>.<buffer>"
     "param_groups": [{"lr": 0.001, ..., "params": [0, 1]}, ...],   # JSON
     "param_steps": [12, 12, 0]}                       # updates of each parameter

The flat index of a parameter is its position in ``optimizer.params`` (the
groups' parameters, group after group). ``param_steps`` differs from
``step`` for parameters that were frozen for some steps (Adam's bias
correction counts a parameter's own updates, like torch's ``state["step"]``).
Dicts written before parameter groups existed (no ``"param_groups"``, the
current lr in ``"config"``) still load: their config applies to every group
and every parameter with state counts ``step`` updates.

``load_state_dict`` copies each array onto its parameter's device and dtype.
"""
from __future__ import annotations

import math
from typing import Any

import numpy

from ..backend import (Array, device_context_of, device_of, get_array_module, same_device,
                       to_device, to_numpy)
from ..layers.base import Parameter
from .params import as_parameter_list, is_trainable
from .regularizers import Regularizer

__all__ = ["Optimizer", "as_parameter_list", "check_range", "GROUP_EXTRA_KEYS"]

GROUP_EXTRA_KEYS = ("initial_lr", "name")  # group keys that are not hyper-parameters


def _split_groups(params: Any) -> list[dict]:
    """``params`` as a list of group dicts (one group unless a list of dicts was given)."""
    if isinstance(params, dict):
        raise TypeError("optimizer: parameter groups must be a list of dicts, got one dict")
    if isinstance(params, Parameter) or (hasattr(params, "parameters")
                                         and callable(params.parameters)):
        return [{"params": params}]
    items = list(params)
    dicts = [isinstance(item, dict) for item in items]
    if items and all(dicts):
        return [dict(item) for item in items]
    if any(dicts):
        raise TypeError("optimizer: give either Parameters or parameter-group dicts, not both")
    return [{"params": items}]


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class Optimizer:
    """Base class. Subclasses define ``_buffers`` or ``_needed_buffers``, ``_validate``
    and ``_update``.

    Args:
        params: a model/layer, an iterable of :class:`Parameter`, or a list of
            parameter-group dicts (see the module docstring).
        lr: default learning rate (python float) of the groups; None makes an
            ``"lr"`` in every group compulsory.
        regularizer: optional object with ``apply(params)`` (see
            :mod:`.regularizers`); its gradient is added into ``p.grad`` at the
            start of every :meth:`step` (frozen parameters excluded).
        **defaults: the subclass's other hyper-parameters (group defaults).
    """

    _buffers: tuple[str, ...] = ()

    def __init__(self, params: Any, lr: float | None, regularizer: Regularizer | None = None,
                 **defaults: Any) -> None:
        self.defaults: dict[str, Any] = self._validate({"lr": lr, **defaults}, "", lr_optional=True)
        self.regularizer = regularizer
        self.step_count = 0
        self.params: list[Parameter] = []
        self.param_groups: list[dict[str, Any]] = []
        self.state: list[dict[str, Array]] = []
        self._group_of: list[int] = []                 # flat index -> group index
        self._steps: list[int] = []                    # updates per parameter
        self._work: list[dict[int, Array]] = []
        self._fresh: list[set[str]] = []               # buffers just zero-filled
        for group in _split_groups(params):
            self.add_param_group(group)

    # ---- public API ----------------------------------------------------------
    @property
    def lr(self) -> float:
        """The first group's learning rate (see the module docstring for the setter)."""
        if not self.param_groups:
            return float(self.defaults["lr"] or 0.0)
        return float(self.param_groups[0]["lr"])

    @lr.setter
    def lr(self, value: float) -> None:
        value = float(value)
        if not self.param_groups:
            self.defaults["lr"] = value
            return
        old = float(self.param_groups[0]["lr"])
        if value == old:
            return
        if len(self.param_groups) > 1:
            if old == 0.0:
                raise ValueError(f"{type(self).__name__}.lr: the first group's lr is 0, so the "
                                 "other groups cannot be scaled with it; set "
                                 "param_groups[i]['lr'] instead")
            ratio = value / old
            for group in self.param_groups[1:]:
                group["lr"] = float(group["lr"]) * ratio
        self.param_groups[0]["lr"] = value

    def add_param_group(self, group: dict) -> None:
        """Append a parameter group (torch's ``add_param_group``): ``{"params": ..., ...}``;
        missing hyper-parameters come from ``self.defaults``."""
        name = type(self).__name__
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{name}: a parameter group is a dict with a 'params' entry, "
                            f"got {group!r}")
        unknown = sorted(set(group) - {"params", *self.defaults, *GROUP_EXTRA_KEYS})
        if unknown:
            raise ValueError(f"{name}: unknown parameter-group keys {unknown}; expected "
                             f"{sorted(self.defaults)} or {list(GROUP_EXTRA_KEYS)}")
        plist = as_parameter_list(group["params"])
        seen = {id(p) for p in self.params}
        if any(id(p) in seen for p in plist):
            raise ValueError(f"{name}: a parameter appears in more than one parameter group")
        index = len(self.param_groups)
        where = f" (parameter group {index})"
        hyper = self._validate({**self.defaults, **{k: v for k, v in group.items()
                                                    if k in self.defaults}}, where)
        new = {"params": plist, **hyper}
        new.update({k: group[k] for k in GROUP_EXTRA_KEYS if k in group})
        self.param_groups.append(new)
        for p in plist:
            self.params.append(p)
            self.state.append({})
            self._group_of.append(index)
            self._steps.append(0)
            self._work.append({})
            self._fresh.append(set())

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to zero (in place)."""
        for p in self.params:
            p.zero_grad()

    def step(self) -> None:
        """Update every trainable parameter from its ``.grad``; no host/device sync."""
        if self.regularizer is not None:
            self.regularizer.apply(self.params)
        self.step_count += 1
        for i, p in enumerate(self.params):
            if not is_trainable(p):
                continue
            group = self.param_groups[self._group_of[i]]
            needed = self._needed_buffers(group)
            with device_context_of(p.data):  # state, scratch and kernels on p's device
                if self._state_stale(self.state[i], p, needed):
                    self._init_state(i, p, needed)
                self._steps[i] += 1
                self._update(p, self.state[i], i, group)
            self._fresh[i].clear()

    def config(self) -> dict:
        """The constructor's hyper-parameters (the group defaults, JSON-serialisable),
        including ``type``; each group's current values are in :attr:`param_groups`."""
        return {"type": type(self).__name__,
                **{k: _jsonable(v) for k, v in self.defaults.items()}}

    def state_dict(self) -> dict:
        """Host copy of the optimizer (see the module docstring for the layout)."""
        arrays: dict[str, numpy.ndarray] = {}
        for i, state in enumerate(self.state):
            for key, value in state.items():
                arrays[f"{i}.{key}"] = numpy.array(to_numpy(value), copy=True)
        groups = []
        for g, group in enumerate(self.param_groups):
            entry = {k: _jsonable(v) for k, v in group.items() if k != "params"}
            entry["params"] = [i for i, owner in enumerate(self._group_of) if owner == g]
            groups.append(entry)
        return {"config": self.config(), "step": int(self.step_count), "state": arrays,
                "param_groups": groups, "param_steps": [int(s) for s in self._steps]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore from :meth:`state_dict` (also the pre-group layout, see the module doc);
        arrays go to each parameter's device and dtype.

        Raises ValueError (and changes nothing) when the optimizer type, the
        parameter count, the groups' sizes, a setting or a buffer's shape does
        not match.
        """
        name = type(self).__name__
        config = dict(state_dict.get("config", {}))
        kind = config.pop("type", name)
        if kind != name:
            raise ValueError(f"{name}.load_state_dict: state is from a {kind}")
        arrays = state_dict.get("state", {})
        for key in arrays:
            index, _, _ = key.partition(".")
            if not index.isdigit() or int(index) >= len(self.params):
                raise ValueError(f"{name}.load_state_dict: unexpected entry {key!r} for "
                                 f"{len(self.params)} parameters")
        unknown = sorted(set(config) - set(self.defaults))
        if unknown:
            raise ValueError(f"{name}.load_state_dict: unknown settings {unknown}")
        defaults = self._validate({**self.defaults, **config}, " (saved config)",
                                  lr_optional=True)
        saved_groups = state_dict.get("param_groups")
        if saved_groups is None:    # pre-group layout: one set of settings for every group
            groups = [{**self._hyper(g), **config} for g in self.param_groups]
            extras: list[dict] = [{k: g[k] for k in GROUP_EXTRA_KEYS if k in g}
                                  for g in self.param_groups]
        else:
            groups, extras = self._groups_from_saved(saved_groups)
        groups = [self._validate(g, f" (saved parameter group {i})")
                  for i, g in enumerate(groups)]
        new_state = self._state_from_host(arrays, groups)
        steps = state_dict.get("param_steps")
        step_count = int(state_dict.get("step", 0))
        if steps is None:
            steps = [step_count if new_state[i] else 0 for i in range(len(self.params))]
        elif len(steps) != len(self.params):
            raise ValueError(f"{name}.load_state_dict: param_steps has {len(steps)} entries "
                             f"for {len(self.params)} parameters")
        # everything checked: assign
        self.defaults = defaults
        for group, hyper, extra in zip(self.param_groups, groups, extras):
            params = group["params"]
            group.clear()
            group.update({"params": params, **hyper, **extra})
        self.state = new_state
        self._fresh = [set() for _ in self.params]
        self._steps = [int(s) for s in steps]
        self.step_count = step_count

    def __repr__(self) -> str:
        cfg = self.config()
        cfg.pop("type")
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items())
        groups = len(self.param_groups)
        where = f" in {groups} groups" if groups != 1 else ""
        return f"{type(self).__name__}({len(self.params)} params{where}, {args})"

    # ---- subclass hooks -------------------------------------------------------
    def _update(self, p: Parameter, state: dict[str, Array], index: int,
                group: dict[str, Any]) -> None:
        """Update ``p`` in place with ``group``'s hyper-parameters (``index``: flat index)."""
        raise NotImplementedError

    def _needed_buffers(self, group: dict[str, Any]) -> tuple[str, ...]:
        """Names of the state buffers a parameter of ``group`` uses."""
        return self._buffers

    def _validate(self, values: dict[str, Any], where: str,
                  lr_optional: bool = False) -> dict[str, Any]:
        """Checked, normalised copy of a full set of hyper-parameters (ValueError if bad).

        ``where`` is appended to the subject of error messages; ``lr_optional``
        allows ``lr=None`` (the constructor's default, when every group has one).
        Subclasses extend it for their own hyper-parameters.
        """
        out = dict(values)
        lr = out.get("lr")
        if lr is None:
            if not lr_optional:
                raise ValueError(f"{type(self).__name__}{where}: no lr; give lr=... or an "
                                 "'lr' in every parameter group")
        else:
            out["lr"] = check_range(f"{type(self).__name__}{where}: lr", lr, 0.0)
        return out

    # ---- helpers ---------------------------------------------------------------
    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in group.items() if k in self.defaults}

    def _groups_from_saved(self, saved: list) -> tuple[list[dict], list[dict]]:
        name = type(self).__name__
        if len(saved) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the state has {len(saved)} parameter "
                             f"groups, this optimizer {len(self.param_groups)}")
        groups, extras = [], []
        for i, (entry, group) in enumerate(zip(saved, self.param_groups)):
            entry = dict(entry)
            indices = list(entry.pop("params", []))
            if len(indices) != len(group["params"]):
                raise ValueError(f"{name}.load_state_dict: saved parameter group {i} has "
                                 f"{len(indices)} parameters, this optimizer's "
                                 f"{len(group['params'])}")
            unknown = sorted(set(entry) - {*self.defaults, *GROUP_EXTRA_KEYS})
            if unknown:
                raise ValueError(f"{name}.load_state_dict: unknown keys {unknown} in saved "
                                 f"parameter group {i}")
            groups.append({**self._hyper(group), **self._hyper(entry)})
            extras.append({k: entry[k] for k in GROUP_EXTRA_KEYS if k in entry})
        return groups, extras

    def _state_from_host(self, arrays: dict, groups: list[dict]) -> list[dict[str, Array]]:
        name = type(self).__name__
        new_state: list[dict[str, Array]] = [{} for _ in self.params]
        for key, value in arrays.items():
            index, _, buffer = key.partition(".")
            i = int(index)
            if buffer not in self._needed_buffers(groups[self._group_of[i]]):
                raise ValueError(f"{name}.load_state_dict: unexpected entry {key!r} for "
                                 f"{len(self.params)} parameters")
            p = self.params[i]
            if tuple(value.shape) != p.shape:
                raise ValueError(f"{name}.load_state_dict: {key!r} has shape "
                                 f"{tuple(value.shape)}, parameter {index} has {p.shape}")
            new_state[i][buffer] = to_device(
                numpy.asarray(value).astype(p.data.dtype), device_of(p.data))
        return new_state

    def _state_stale(self, state: dict[str, Array], p: Parameter,
                     needed: tuple[str, ...]) -> bool:
        """True when state buffers no longer match the parameter (moved to another device or
        GPU, cast, missing)."""
        for name in needed:
            buf = state.get(name)
            if buf is None or buf.dtype != p.data.dtype or not same_device(buf, p.data):
                return True
        return False

    def _init_state(self, index: int, p: Parameter, needed: tuple[str, ...]) -> None:
        """Create missing buffers (zeros) and move existing ones to p's device/dtype."""
        xp = get_array_module(p.data)
        state = self.state[index]
        device = device_of(p.data)
        for name in needed:
            buf = state.get(name)
            if buf is None:
                state[name] = xp.zeros_like(p.data)
                self._fresh[index].add(name)
            elif buf.dtype != p.data.dtype or not same_device(buf, p.data):
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
        if work is None or work.dtype != p.data.dtype or not same_device(work, p.data) \
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
