"""Winograd F(2x2, 3x3) convolution (gpuconv.ops.winograd, the CPU path for 3x3 convs of
>= 64 channels) against the im2col path and PyTorch: transforms and their adjoints,
forward and all gradients over odd/even sizes, asymmetric paddings, several batch
chunks, frozen weight / no input gradient, NumPy and the fake CuPy."""
from __future__ import annotations

import numpy
import pytest
import torch
import torch.nn.functional as F

from gpuconv.backend import to_device, to_numpy
from gpuconv.layers import Conv2D
from gpuconv.ops import conv as conv_ops
from gpuconv.ops import winograd

G = numpy.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
BT = numpy.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float)
AT = numpy.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)


def test_filter_transform_is_g_w_gt_and_its_adjoint_is_exact():
    rng = numpy.random.default_rng(0)
    w = rng.standard_normal((5, 3, 3, 3))
    u = winograd.filter_transform(w)
    expected = numpy.einsum("ai,ocij,bj->abco", G, w, G).reshape(16, 3, 5)
    numpy.testing.assert_allclose(u, expected, rtol=1e-14, atol=1e-14)
    du = rng.standard_normal(u.shape)
    # <U(w), dU> == <w, U^T(dU)>: the weight gradient is the exact adjoint
    numpy.testing.assert_allclose((u * du).sum(),
                                  (w * winograd.filter_transform_adjoint(du)).sum(), rtol=1e-12)


def test_tile_transforms_and_adjoints():
    rng = numpy.random.default_rng(1)
    th, tw, nb, c = 3, 4, 2, 5
    xq = rng.standard_normal((2 * th + 2, 2 * tw + 2, nb, c))
    v = winograd.input_transform(xq, th, tw, None).reshape(4, 4, th, tw, nb, c)
    for t, s in ((0, 0), (2, 3), (1, 2)):
        d = xq[2 * t:2 * t + 4, 2 * s:2 * s + 4]                 # (4, 4, nb, c)
        numpy.testing.assert_allclose(v[:, :, t, s], numpy.einsum("ak,kmnc,bm->abnc", BT, d, BT),
                                      rtol=1e-13, atol=1e-13)
    dv = rng.standard_normal((16, th * tw * nb, c))
    dxq = winograd.input_transform_adjoint(dv, 2 * th + 2, 2 * tw + 2, th, tw, None)
    numpy.testing.assert_allclose((v.reshape(dv.shape) * dv).sum(), (xq * dxq).sum(), rtol=1e-12)
    m = rng.standard_normal((16, th * tw * nb, 7))
    y = winograd.output_transform(m, th, tw, None)
    mm = m.reshape(4, 4, th, tw, nb, 7)
    numpy.testing.assert_allclose(y, numpy.einsum("ia,abtsno,jb->ijtsno", AT, mm, AT),
                                  rtol=1e-13, atol=1e-13)
    dy = rng.standard_normal(y.shape)
    dm = winograd.output_transform_adjoint(dy, None)
    numpy.testing.assert_allclose((y * dy).sum(), (m * dm).sum(), rtol=1e-12)


CASES = [  # (N, C, O, H, W, padding)
    (5, 64, 64, 7, 7, (1, 1, 1, 1)),      # airbench's 128-channel convs, scaled down
    (3, 64, 80, 8, 9, (1, 1, 1, 1)),      # even height, odd width
    (4, 72, 64, 9, 7, (0, 2, 1, 0)),      # asymmetric padding
    (2, 64, 64, 6, 6, (2, 2, 2, 2)),
    (70, 64, 64, 7, 7, (1, 1, 1, 1)),     # more images than one chunk
]


def _run(device, x, w, b, dy, padding, whole, need_input_grad=True, need_weight_grad=True):
    xd, wd, bd, dyd = (to_device(a, device) for a in (x, w, b, dy))
    chunk = x.shape[0] if whole else None
    y, saved = conv_ops.conv2d_forward(xd, wd, bd, (1, 1), padding, (1, 1), chunk=chunk)
    assert (getattr(saved, "winograd", None) is not None) == (not whole)
    grads = conv_ops.conv2d_backward(dyd, saved, wd, x.shape, (1, 1), padding, (1, 1), True,
                                     need_input_grad=need_input_grad,
                                     need_weight_grad=need_weight_grad)
    return [to_numpy(y)] + [None if g is None else to_numpy(g) for g in grads]


@pytest.mark.parametrize("device", ["cpu", "fakecupy"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_winograd_conv_equals_im2col(case, device):
    n, c, o, h, w, padding = case
    rng = numpy.random.default_rng(n + h)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((o, c, 3, 3))
    b = rng.standard_normal(o)
    dy = rng.standard_normal((n, o, h + padding[0] + padding[1] - 2, w + padding[2] + padding[3] - 2))
    assert winograd.worthwhile(x.shape, wt.shape, (1, 1), padding, (1, 1))
    ref = _run(device, x, wt, b, dy, padding, whole=True)
    got = _run(device, x, wt, b, dy, padding, whole=False)
    for name, a, r in zip(("y", "dx", "dweight", "dbias"), got, ref):
        numpy.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12 * numpy.abs(r).max(),
                                      err_msg=name)
    for need_input_grad, need_weight_grad in ((True, False), (False, True)):
        part = _run(device, x, wt, b, dy, padding, False, need_input_grad, need_weight_grad)
        assert (part[1] is None) != need_input_grad and (part[2] is None) != need_weight_grad
        for a, r in zip(part, ref):
            if a is not None:
                numpy.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12 * numpy.abs(r).max())
    # float32: within float32 rounding of the float64 result
    got32 = _run(device, *(a.astype(numpy.float32) for a in (x, wt, b, dy)), padding, False)
    for name, a, r in zip(("y", "dx", "dweight"), got32, ref):
        assert a.dtype == numpy.float32
        numpy.testing.assert_allclose(a, r, rtol=0, atol=3e-6 * numpy.abs(r).max(), err_msg=name)


def test_winograd_is_used_only_where_it_gains():
    x, w = numpy.zeros((2, 64, 7, 7), numpy.float32), numpy.zeros((64, 64, 3, 3), numpy.float32)
    same = (1, 1, 1, 1)
    assert conv_ops.use_winograd(x, w, (1, 1), same, (1, 1), "auto")
    assert not conv_ops.use_winograd(x, w, (1, 1), same, (1, 1), "rows")       # asked for im2col
    assert not conv_ops.use_winograd(x, w, (2, 2), same, (1, 1), "auto")       # stride
    assert not conv_ops.use_winograd(x, w, (1, 1), same, (2, 2), "auto")       # dilation
    assert not conv_ops.use_winograd(x[:, :32], w[:, :32], (1, 1), same, (1, 1), "auto")
    assert not conv_ops.use_winograd(x[:, :, :4, :4], w, (1, 1), same, (1, 1), "auto")
    assert not conv_ops.use_winograd(x.astype(numpy.float16), w.astype(numpy.float16), (1, 1),
                                     same, (1, 1), "auto")
    assert not conv_ops.use_winograd(x, w[:, :, :2, :2], (1, 1), same, (1, 1), "auto")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_winograd_conv_layer_matches_torch(dtype):
    rng = numpy.random.default_rng(7)
    layer = Conv2D(64, 64, 3, padding="same", bias=False, dtype=dtype)
    x = rng.standard_normal((3, 64, 7, 7)).astype(dtype)
    y = layer.forward(x)
    assert layer._cache[0].winograd is not None
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    wt = torch.from_numpy(layer.weight.data.copy()).requires_grad_(True)
    yt = F.conv2d(xt, wt, padding=1)
    yt.backward(torch.from_numpy(dy))
    tol = 1e-5 if dtype == "float32" else 1e-12
    for ours, theirs in ((y, yt.detach()), (dx, xt.grad), (layer.weight.grad, wt.grad)):
        theirs = theirs.numpy()
        numpy.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol * numpy.abs(theirs).max())


def test_winograd_gives_every_worker_a_chunk(monkeypatch):
    """At batch 64 of 8x8 images one ~1024-tile chunk would be the whole batch and
    leave the second worker idle: the batch is cut into one chunk per worker at least."""
    x = numpy.zeros((64, 64, 8, 8), numpy.float32)
    w = numpy.zeros((64, 64, 3, 3), numpy.float32)
    assert winograd.tiles_per_chunk(x.shape, (1, 1, 1, 1)) == 64
    for workers, chunk in ((1, 64), (2, 32), (3, 22)):
        monkeypatch.setattr(conv_ops, "num_threads", lambda: workers)
        _, saved = conv_ops.conv2d_forward(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1))
        assert saved.winograd is not None and saved.chunk == chunk
