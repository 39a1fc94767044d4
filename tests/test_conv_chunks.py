"""Batch-chunked convolution (the CPU default) against the whole-batch reference path.

``conv2d_forward(..., chunk=k)`` runs k images per GEMM and keeps only x;
``conv2d_backward`` then rebuilds each chunk's columns. Both must equal the
whole-batch im2col path (one GEMM, columns kept) for every column method,
stride, padding and dilation, every chunk size (a smaller last chunk included),
with and without the weight / input gradients, on NumPy and the fake CuPy.
"""
from __future__ import annotations

import numpy
import pytest

from gpuconv.backend import to_device, to_numpy
from gpuconv.ops import conv as conv_ops
from gpuconv.ops.workspace import Workspace

CASES = [  # kernel, stride, padding (top, bottom, left, right), dilation, (H, W), method
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (7, 6), "rows"),
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (7, 6), "windows"),
    ((2, 2), (1, 1), (0, 0, 0, 0), (1, 1), (5, 5), "auto"),   # airbench's whitening conv
    ((3, 2), (2, 1), (1, 0, 2, 1), (1, 2), (8, 7), "auto"),
    ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), (3, 4), "rows"),
]


def _run(device, x, w, b, dy, case, chunk, need_input_grad=True, need_weight_grad=True,
         workspace=None):
    kernel, stride, padding, dilation, _, method = case
    xd, wd, bd, dyd = (to_device(a, device) for a in (x, w, b, dy))
    y, saved = conv_ops.conv2d_forward(xd, wd, bd, stride, padding, dilation, method,
                                       workspace, chunk=chunk)
    assert isinstance(saved, conv_ops.SavedInput) == (chunk < x.shape[0])
    grads = conv_ops.conv2d_backward(dyd, saved, wd, x.shape, stride, padding, dilation, True,
                                     method, workspace, need_input_grad=need_input_grad,
                                     need_weight_grad=need_weight_grad)
    return [to_numpy(y)] + [None if g is None else to_numpy(g) for g in grads]


@pytest.mark.parametrize("device", ["cpu", "fakecupy"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[0]}s{c[1]}d{c[3]}{c[5]}")
def test_chunked_conv_equals_the_whole_batch_path(case, device):
    kernel, stride, padding, dilation, hw, _ = case
    rng = numpy.random.default_rng(0)
    n = 5
    x = rng.standard_normal((n, 3) + hw)
    w = rng.standard_normal((4, 3) + kernel)
    b = rng.standard_normal(4)
    y_ref, _ = conv_ops.conv2d_forward(x, w, b, stride, padding, dilation, case[5], chunk=n)
    dy = rng.standard_normal(y_ref.shape)
    whole = _run(device, x, w, b, dy, case, n)
    workspace = Workspace()
    for chunk in (1, 2, 3, 4):
        for _ in range(2):  # a second step reuses the chunk workspaces
            got = _run(device, x, w, b, dy, case, chunk, workspace=workspace)
            for name, a, r in zip(("y", "dx", "dweight", "dbias"), got, whole):
                numpy.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12,
                                              err_msg=f"{name} chunk {chunk}")
            numpy.testing.assert_array_equal(got[3], whole[3])  # one summation order
    # frozen weight (no columns rebuilt) and first layer (no dx)
    for need_input_grad, need_weight_grad in ((True, False), (False, True)):
        got = _run(device, x, w, b, dy, case, 2, need_input_grad, need_weight_grad)
        ref = _run(device, x, w, b, dy, case, n, need_input_grad, need_weight_grad)
        assert (got[1] is None) == (not need_input_grad)
        assert (got[2] is None) == (not need_weight_grad)
        for a, r in zip(got, ref):
            if r is not None:
                numpy.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12)


def test_chunked_float16_accumulates_weight_gradients_in_float32():
    case = CASES[0]
    rng = numpy.random.default_rng(1)
    x = rng.standard_normal((6, 3, 7, 6)).astype(numpy.float16)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(numpy.float16)
    b = numpy.zeros(4, numpy.float16)
    dy = rng.standard_normal((6, 4, 7, 6)).astype(numpy.float16)
    got = _run("cpu", x, w, b, dy, case, 2)
    exact = _run("cpu", *(a.astype(numpy.float64) for a in (x, w, b, dy)), case, 6)
    assert got[2].dtype == numpy.float16 and got[3].dtype == numpy.float32
    for a, r in zip(got, exact):
        numpy.testing.assert_allclose(a.astype(numpy.float64), r, rtol=2e-2,
                                      atol=2e-2 * numpy.abs(r).max())


def test_thin_convolutions_chunk_to_keep_columns_and_output_in_cache():
    # a first layer's GEMM (K = 3*3*3 = 27 rows) gets chunks whose columns and output
    # fit THIN_CHUNK_ELEMENTS, far fewer images than the column budget alone would allow
    x = numpy.zeros((64, 3, 32, 32), numpy.float32)
    w = numpy.zeros((32, 3, 3, 3), numpy.float32)
    chunk = conv_ops.images_per_chunk(x, w, (1, 1), (1, 1, 1, 1), (1, 1))
    per_image = (27 + 32) * 32 * 34
    assert chunk & (chunk - 1) == 0
    assert chunk * per_image <= conv_ops.THIN_CHUNK_ELEMENTS < 2 * chunk * per_image
    assert 2 * chunk * 27 * 32 * 34 <= conv_ops.CHUNK_COLUMN_ELEMENTS
    # K = 64 rows and more: the column budget
    wide = numpy.zeros((32, 64, 1, 1), numpy.float32)
    assert conv_ops.images_per_chunk(numpy.zeros((64, 64, 32, 32), numpy.float32), wide,
                                     (1, 1), (0, 0, 0, 0), (1, 1)) == 16


def test_images_per_chunk_fits_the_column_budget():
    x = numpy.zeros((1024, 24, 31, 31), numpy.float32)
    w = numpy.zeros((32, 24, 3, 3), numpy.float32)
    chunk = conv_ops.images_per_chunk(x, w, (1, 1), (1, 1, 1, 1), (1, 1))
    per_image = 24 * 9 * 31 * 33
    assert chunk & (chunk - 1) == 0  # a power of two
    assert chunk * per_image <= conv_ops.CHUNK_COLUMN_ELEMENTS < 2 * chunk * per_image
    assert conv_ops.images_per_chunk(x[:1], w, (1, 1), (1, 1, 1, 1), (1, 1)) == 1
    fake = to_device(x[:8], "fakecupy")  # the fake CuPy runs the CPU's chunks (not CUDA's)
    assert conv_ops.images_per_chunk(fake, to_device(w, "fakecupy"), (1, 1), (1, 1, 1, 1),
                                     (1, 1)) == chunk
