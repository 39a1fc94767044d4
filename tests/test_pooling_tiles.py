"""Max pooling with non-overlapping unpadded windows (kernel == stride, padding 0), the
in-place strided-view path, against a naive per-window reference: odd sizes (floor mode
drops the last rows/columns, airbench's 31 -> 15), ties (first maximum wins, as in
PyTorch), several batch chunks, int32 indices for windows above 255 elements, NumPy and
the fake CuPy."""
from __future__ import annotations

import numpy
import pytest

from gpuconv.backend import to_device, to_numpy
from gpuconv.ops import pooling


def _naive(x, kernel):
    n, c, h, w = x.shape
    oh, ow = h // kernel[0], w // kernel[1]
    y = numpy.empty((n, c, oh, ow), x.dtype)
    arg = numpy.empty((n, c, oh, ow), numpy.int64)
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * kernel[0]:(i + 1) * kernel[0], j * kernel[1]:(j + 1) * kernel[1]]
            flat = win.reshape(n, c, -1)
            arg[:, :, i, j] = flat.argmax(axis=2)  # the first maximum
            y[:, :, i, j] = flat.max(axis=2)
    return y, arg


def _naive_backward(dy, arg, x_shape, kernel):
    dx = numpy.zeros(x_shape, dy.dtype)
    n, c, oh, ow = dy.shape
    for i in range(oh):
        for j in range(ow):
            a, b = numpy.divmod(arg[:, :, i, j], kernel[1])
            rows, cols = i * kernel[0] + a, j * kernel[1] + b
            nn, cc = numpy.meshgrid(numpy.arange(n), numpy.arange(c), indexing="ij")
            dx[nn, cc, rows, cols] = dy[:, :, i, j]
    return dx


@pytest.mark.parametrize("device", ["cpu", "fakecupy"])
@pytest.mark.parametrize("kernel,hw", [((2, 2), (31, 31)), ((2, 2), (8, 6)), ((3, 3), (3, 3)),
                                       ((3, 2), (7, 9)), ((2, 3), (5, 4)), ((1, 1), (3, 2)),
                                       ((16, 16), (17, 33))])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tiled_max_pool_matches_naive_windows(kernel, hw, dtype, device, monkeypatch):
    monkeypatch.setattr(pooling, "CHUNK_ELEMENTS", 3 * hw[0] * hw[1])  # several chunks
    rng = numpy.random.default_rng(sum(kernel) + hw[0])
    x = rng.standard_normal((5, 3) + hw).astype(dtype)
    x[rng.random(x.shape) < 0.4] = 0.0  # ties, as after ReLU
    x[0, 0] = 0.0                       # whole windows tied
    y_ref, arg_ref = _naive(x, kernel)
    y, arg = pooling.max_pool2d_forward(to_device(x, device), kernel, kernel, (0, 0, 0, 0))
    y, arg = to_numpy(y), to_numpy(arg)
    assert arg.dtype == (numpy.uint8 if kernel[0] * kernel[1] <= 255 else numpy.int32)
    numpy.testing.assert_array_equal(y, y_ref)
    numpy.testing.assert_array_equal(arg, arg_ref)
    y_only, none = pooling.max_pool2d_forward(to_device(x, device), kernel, kernel, (0, 0, 0, 0),
                                              need_argmax=False)
    assert none is None
    numpy.testing.assert_array_equal(to_numpy(y_only), y_ref)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    dx = pooling.max_pool2d_backward(to_device(dy, device), to_device(arg, device), x.shape,
                                     kernel, kernel, (0, 0, 0, 0))
    numpy.testing.assert_array_equal(to_numpy(dx), _naive_backward(dy, arg_ref, x.shape, kernel))
