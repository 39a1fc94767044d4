"""Shared fixtures.

``device`` runs a test once on the CPU (NumPy) and once on ``"fakecupy"``, a
strict fake CuPy (tests/fakecupy.py) that raises wherever real CuPy would
raise (mixing device and host arrays, implicit conversion, names CuPy lacks).
Use it as ``to_device(x, device)`` and ``layer.to(device)``.
"""
from __future__ import annotations

import os
import sys

import numpy
import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
for _path in (_ROOT, _HERE):  # gpuconv without installing; `import fakecupy` from tests
    if _path not in sys.path:
        sys.path.insert(0, _path)

import gpuconv  # noqa: E402
import fakecupy  # noqa: E402  (importing registers the "fakecupy" backend)

DEVICES = ["cpu", fakecupy.DEVICE]


@pytest.fixture(params=DEVICES, ids=["cpu", "fakecupy"])
def device(request) -> str:
    """A device name: "cpu" (NumPy) or "fakecupy" (strict fake CuPy)."""
    fakecupy.register()  # idempotent; survives tests that re-register backends
    return request.param


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same generator state (gpuconv and numpy's legacy global)."""
    gpuconv.seed(0)
    state = numpy.random.get_state()
    numpy.random.seed(0)
    yield
    numpy.random.set_state(state)
