"""Seeded random generators, one per array module (device kind).

Only the Generator methods that CuPy also offers are used by gpuconv:
``random(size, dtype)``, ``standard_normal(size, dtype)``, ``uniform`` and
``integers``. Shuffling of sample indices happens on the host with NumPy.

Checkpoints: :func:`get_state` / :func:`set_state` snapshot and restore the
host generator and the CPU (NumPy) generator exactly. A device generator
(CuPy's) cannot be serialised, so instead ``fit`` calls
:func:`reseed_for_epoch` at the start of every epoch on a non-CPU device:
every non-CPU generator then restarts from a deterministic function of
``(seed, epoch)``, and a run resumed from a checkpoint draws the same device
random numbers (dropout masks, device augmentation) as an uninterrupted one.
The CPU generator is never reseeded per epoch: it runs on continuously and
its checkpointed state makes CPU resumes bit-identical.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy

from .devices import backend_of_module

_DEFAULT_SEED = 0
_seed: int = _DEFAULT_SEED
_generators: dict[tuple[str, int], Any] = {}  # (backend, device index) -> generator
_host_generator = numpy.random.default_rng(_DEFAULT_SEED)
_device_epoch: int | None = None  # epoch the non-CPU generators were last reseeded for
_CPU = "cpu"
_EPOCH_SEED_STRIDE = 1_000_003


def seed(value: int) -> None:
    """Seed every device's generator and the host generator with ``value``.

    Also forgets any :func:`reseed_for_epoch`: device generators start from
    ``value`` itself again.
    """
    global _seed, _host_generator, _device_epoch
    if not isinstance(value, (int, numpy.integer)) or value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}")
    _seed = int(value)
    _device_epoch = None
    _generators.clear()  # recreated lazily from the new seed on each device
    _host_generator = numpy.random.default_rng(_seed)


def get_seed() -> int:
    return _seed


def epoch_seed(seed_value: int, epoch: int) -> int:
    """The seed of the non-CPU generators in ``epoch``: ``seed * 1_000_003 + epoch``."""
    return int(seed_value) * _EPOCH_SEED_STRIDE + int(epoch)


def generator(xp: ModuleType) -> Any:
    """The seeded ``Generator`` of array module ``xp`` (numpy or cupy) on its current device.

    One per device: a CuPy generator keeps its state on the GPU that was current
    when it was made and cannot draw on another. Created on first use from the
    global seed or, for a non-CPU module after :func:`reseed_for_epoch`, from
    :func:`epoch_seed` of that epoch (the same numbers on every device).
    """
    backend = backend_of_module(xp)
    key = (backend.name, backend.current_index())
    gen = _generators.get(key)
    if gen is None:
        use_epoch = backend.name != _CPU and _device_epoch is not None
        gen = xp.random.default_rng(epoch_seed(_seed, _device_epoch) if use_epoch else _seed)
        _generators[key] = gen
    return gen


def reseed_for_epoch(epoch: int) -> None:
    """Restart every non-CPU generator from ``epoch_seed(seed, epoch)``.

    Device generators (CuPy's) cannot be saved in a checkpoint; reseeding them
    at the start of each epoch makes what they draw a function of the seed
    and the epoch alone, so a resumed GPU run reproduces an uninterrupted
    one bit for bit. The generators are recreated (lazily, on their next use
    by :func:`generator`); the CPU and host generators are left untouched.
    ``fit`` calls this at the start of every epoch on non-CPU devices only.
    """
    global _device_epoch
    if isinstance(epoch, bool) or not isinstance(epoch, (int, numpy.integer)) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
    _device_epoch = int(epoch)
    for key in [k for k in _generators if k[0] != _CPU]:
        del _generators[key]


def host_generator() -> numpy.random.Generator:
    """The seeded NumPy generator used for host-side work (shuffling indices)."""
    return _host_generator


def get_state() -> dict:
    """Snapshot of the seed, the host and the CPU generator states, for checkpoints.

    Host-side dicts only. Non-CPU generators are not included (CuPy's cannot
    be serialised); see :func:`reseed_for_epoch`.
    """
    state = {"seed": _seed, "host": _host_generator.bit_generator.state}
    for (name, _), gen in _generators.items():
        bit_gen = getattr(gen, "bit_generator", None)
        if name == _CPU and bit_gen is not None:
            state["cpu"] = bit_gen.state
    return state


def set_state(state: dict) -> None:
    """Restore a snapshot made by :func:`get_state`.

    Non-CPU generators restart from the restored seed (as after :func:`seed`)
    until the next :func:`reseed_for_epoch`.
    """
    global _seed, _device_epoch
    _seed = int(state["seed"])
    _device_epoch = None
    _generators.clear()
    _host_generator.bit_generator.state = state["host"]
    if _CPU in state:
        gen = numpy.random.default_rng(_seed)
        gen.bit_generator.state = state[_CPU]
        _generators[(_CPU, 0)] = gen


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> numpy.ndarray:
    """Host sample indices (int64, (n,)) for ``epoch``: a pure function of (seed, epoch).

    Shuffling happens on the host with NumPy (cupy's Generator has no
    ``permutation``); deriving the order from (seed, epoch) alone is what
    lets a resumed run visit the data exactly as an uninterrupted one.
    """
    if not shuffle:
        return numpy.arange(n, dtype=numpy.int64)
    return numpy.random.default_rng([int(seed), int(epoch)]).permutation(n)
