"""Shared fixtures.

``device`` runs a test once on the CPU (NumPy) and once on ``"fakecupy"``, a
strict fake CuPy (tests/fakecupy.py) that raises wherever real CuPy would
raise (mixing device and host arrays, implicit conversion, names CuPy lacks).
Use it as ``to_device(x, device)`` and ``layer.to(device)``.
"""
from __future__ import annotations

import os
import signal
import sys

import numpy
import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
for _path in (_ROOT, _HERE):  # gpuconv without installing; `import fakecupy` from tests
    if _path not in sys.path:
        sys.path.insert(0, _path)

# Tests send real SIGINTs (to this process and to subprocesses). A suite started in the
# background (``cmd &`` in a script, nohup) inherits SIGINT ignored, and an ignored signal
# stays ignored in every child: restore Python's handler, which children reset to default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import gpuconv  # noqa: E402
import fakecupy  # noqa: E402  (importing registers the "fakecupy" backend)

DEVICES = ["cpu", fakecupy.DEVICE]
DEVICE_IDS = ["cpu", "fakecupy"]


def _device(request) -> str:
    fakecupy.register()  # idempotent; survives tests that re-register backends
    return request.param


@pytest.fixture(params=DEVICES, ids=DEVICE_IDS)
def device(request) -> str:
    """A device name: "cpu" (NumPy) or "fakecupy" (strict fake CuPy)."""
    return _device(request)


def device_fixture_with_second_gpu():
    """The ``device`` fixture plus ``"fakecupy:1"``: the model and data on the fake's
    second GPU while the current device stays 0, as on every rank but the first of a
    one-GPU-per-rank job. The fake (like CuPy) raises wherever gpuconv computes outside
    its arrays' device. A module opts in with ``device = device_fixture_with_second_gpu()``;
    its own direct writes into device arrays go through ``on_device(device)``. Modules
    that test single ops (which, like CuPy's functions, run on the current device) stay
    on the plain fixture."""
    return pytest.fixture(params=DEVICES + [fakecupy.DEVICE + ":1"],
                          ids=DEVICE_IDS + ["fakecupy1"], name="device")(_device)


def on_device(device: str):
    """Context making ``device`` current, for a test's own operations on its arrays."""
    return gpuconv.backend.get_device(device).context()


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same generator state (gpuconv and numpy's legacy global)."""
    gpuconv.seed(0)
    state = numpy.random.get_state()
    numpy.random.seed(0)
    yield
    numpy.random.set_state(state)
