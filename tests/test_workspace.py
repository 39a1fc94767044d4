"""Conv workspaces: reused buffers never leak one call's data into the next (CPU), and off
the CPU they keep nothing, so scratch does not add up over the layers."""
import types

import fakecupy
import numpy as np
import pytest

import gpuconv
from gpuconv.backend import get_array_module, to_device, to_numpy
from gpuconv.layers import Conv2D
from gpuconv.models.presets import build_preset
from gpuconv.ops import chunks
from gpuconv.ops import conv as conv_ops
from gpuconv.ops.conv import conv2d_forward
from gpuconv.ops.workspace import Workspace, keeps_buffers


def test_same_layer_on_transposed_geometries_matches_fresh_buffers():
    # 8x10 and 10x8 inputs pad to buffers of the same flat size (10*12 == 12*10):
    # a zero border kept from the first geometry must not be reused for the second
    rng = np.random.default_rng(0)
    layer = Conv2D(3, 4, 3, padding=1).astype("float64")
    for shape in [(2, 3, 8, 10), (2, 3, 10, 8), (2, 3, 8, 10)]:
        x = rng.standard_normal(shape)
        y = layer.forward(x)
        fresh, _ = conv2d_forward(x, layer.weight.data, layer.bias.data, (1, 1), (1, 1, 1, 1),
                                  (1, 1))
        np.testing.assert_allclose(y, fresh, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fill", ["zeros", "zeros_once", "empty"])
def test_workspace_reuse_rules(fill):
    ws = Workspace()
    a, fresh = ws.get("buf", (4, 5), np.float32, np, fill, layout="A")
    assert fresh and a.shape == (4, 5) and a.dtype == np.float32
    a[...] = 7
    b, fresh = ws.get("buf", (4, 5), np.float32, np, fill, layout="A")
    assert b is a and not fresh
    assert (b == 0).all() if fill == "zeros" else (b == 7).all()
    c, fresh = ws.get("buf", (4, 5), np.float32, np, fill, layout="B")
    assert fresh and c is not a
    d, fresh = ws.get("buf", (4, 5), np.float64, np, fill, layout="B")
    assert fresh and d.dtype == np.float64


# ---- what the workspaces hold on the GPU ------------------------------------------------------

def _run_like_cuda(monkeypatch) -> None:
    """Send the fake CuPy down the CUDA code path: whole batches (one im2col and one GEMM per
    layer, the columns kept for backward), no batch chunks, no Winograd."""
    real = chunks.backend_of_module
    monkeypatch.setattr(chunks, "backend_of_module", lambda xp: types.SimpleNamespace(
        name="cuda") if xp is fakecupy.xp else real(xp))


def _held_bytes(model, device: str) -> tuple[int, int, int]:
    """``(transient, saved, largest)`` bytes of the conv layers after a training step:
    what their workspaces hold beyond the columns each layer saved for backward, those
    columns, and the most bytes of workspace buffers a single layer used at once."""
    gpuconv.seed(0)
    rng = np.random.default_rng(0)
    x = to_device(rng.standard_normal((128, 3, 32, 32), dtype=np.float32), device)
    model.train()
    y = model.forward(x)
    model.backward(to_device(rng.standard_normal(y.shape, dtype=np.float32), device))
    convs = [layer for layer in model if isinstance(layer, Conv2D)]
    saved = {id(c._cache[0]): c._cache[0] for c in convs if not isinstance(
        c._cache[0], conv_ops.SavedInput)}
    transient = [sum(a.nbytes for a in c._cache_workspace.arrays() if id(a) not in saved)
                 for c in convs]
    return sum(transient), sum(a.nbytes for a in saved.values()), max(transient)


def test_seed_cnn_on_the_device_keeps_only_the_columns_backward_needs(monkeypatch):
    # each layer's im2col input, GEMM output, dy matrix, column gradient and col2im sum
    # are needed within one forward or one backward call: kept per layer they would add
    # up over all layers (with CUDA's whole batches: 159 MiB, where the largest single
    # call, the second conv's backward, uses 55 MiB); CuPy's pool recycles them
    _run_like_cuda(monkeypatch)
    model = build_preset("seed-cnn").to(fakecupy.DEVICE)
    for _ in range(2):  # a second step neither keeps more nor the first step's columns
        transient, saved, _ = _held_bytes(model, fakecupy.DEVICE)
        assert transient == 0, f"{transient / 2**20:.1f} MiB of scratch held by conv layers"
    # columns (KH*KW*C, N*OH*Wp) float32 of 3, 32 and 64 channels at 32, 16 and 8 pixels
    assert saved == 4 * 128 * 9 * (3 * 32 * 34 + 32 * 16 * 18 + 64 * 8 * 10)


def test_seed_cnn_on_the_cpu_keeps_its_workspace_buffers():
    # the CPU keeps its buffers (fresh memory costs page faults there): the same arrays
    # serve every step
    model = build_preset("seed-cnn")
    transient, _, largest = _held_bytes(model, "cpu")
    assert transient > 0 and largest > 0
    convs = [layer for layer in model if isinstance(layer, Conv2D)]
    before = [{id(a) for a in c._cache_workspace.arrays()} for c in convs]
    _held_bytes(model, "cpu")
    assert [{id(a) for a in c._cache_workspace.arrays()} for c in convs] == before


def test_workspace_off_the_cpu_hands_out_new_arrays_and_keeps_none():
    xp = fakecupy.xp
    ws = Workspace()
    np_buffer, _ = ws.get("buf", (4, 5), np.float32, np)  # kept on the CPU ...
    assert ws.arrays() == [np_buffer]
    for fill in ("empty", "zeros", "zeros_once"):
        a, fresh = ws.get("buf", (4, 5), np.float32, xp, fill, layout="A")
        b, fresh_again = ws.get("buf", (4, 5), np.float32, xp, fill, layout="A")
        assert fresh and fresh_again and a is not b
        assert get_array_module(a) is xp and a.shape == (4, 5) and a.dtype == np.float32
        if fill != "empty":
            assert not to_numpy(b).any()
    assert ws.arrays() == []  # ... and dropped once the owner works on the device
    assert keeps_buffers(np) and not keeps_buffers(xp)
