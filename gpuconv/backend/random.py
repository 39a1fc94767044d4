"""Seeded random generators, one per array module (device kind).

Only the Generator methods that CuPy also offers are used by gpuconv:
``random(size, dtype)``, ``standard_normal(size, dtype)``, ``uniform`` and
``integers``. Shuffling of sample indices happens on the host with NumPy.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy

from .devices import backend_of_module

_DEFAULT_SEED = 0
_seed: int = _DEFAULT_SEED
_generators: dict[str, Any] = {}
_host_generator = numpy.random.default_rng(_DEFAULT_SEED)


def seed(value: int) -> None:
    """Seed every device's generator and the host generator with ``value``."""
    global _seed, _host_generator
    if not isinstance(value, (int, numpy.integer)) or value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}")
    _seed = int(value)
    _generators.clear()  # recreated lazily from the new seed on each device
    _host_generator = numpy.random.default_rng(_seed)


def get_seed() -> int:
    return _seed


def generator(xp: ModuleType) -> Any:
    """The seeded ``Generator`` of array module ``xp`` (numpy or cupy)."""
    name = backend_of_module(xp).name
    gen = _generators.get(name)
    if gen is None:
        gen = xp.random.default_rng(_seed)
        _generators[name] = gen
    return gen


def host_generator() -> numpy.random.Generator:
    """The seeded NumPy generator used for host-side work (shuffling indices)."""
    return _host_generator


def get_state() -> dict:
    """Snapshot of all generator states, for checkpoints (host-side dicts only)."""
    state = {"seed": _seed, "host": _host_generator.bit_generator.state}
    for name, gen in _generators.items():
        bit_gen = getattr(gen, "bit_generator", None)
        if name == "cpu" and bit_gen is not None:
            state["cpu"] = bit_gen.state
    return state


def set_state(state: dict) -> None:
    """Restore a snapshot made by :func:`get_state`."""
    global _seed
    _seed = int(state["seed"])
    _generators.clear()
    _host_generator.bit_generator.state = state["host"]
    if "cpu" in state:
        gen = numpy.random.default_rng(_seed)
        gen.bit_generator.state = state["cpu"]
        _generators["cpu"] = gen
