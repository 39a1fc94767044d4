"""channel_sum: per-channel sums over batch and spatial axes, on CPU and the strict fake CuPy."""
import numpy as np
import pytest

from gpuconv.backend import to_device, to_numpy
from gpuconv.ops.reduce import channel_sum


@pytest.mark.parametrize("shape", [(7, 3), (5, 4, 9), (6, 3, 5, 7), (1, 2, 1, 1), (0, 3, 4, 4)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_channel_sum_matches_float64_sum(device, shape, dtype):
    x = (np.random.default_rng(0).standard_normal(shape) + 3).astype(dtype)
    got = channel_sum(to_device(x, device))
    axes = (0,) + tuple(range(2, x.ndim))
    expected = x.astype(np.float64).sum(axis=axes)
    assert got.shape == (shape[1],) and got.dtype == np.dtype(dtype)
    rtol = 1e-6 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(to_numpy(got), expected, rtol=rtol, atol=rtol)


def test_channel_sum_large_batch_is_as_accurate_as_numpy_sum():
    x = (np.random.default_rng(1).standard_normal((64, 8, 32, 32)) + 5).astype(np.float32)
    exact = x.astype(np.float64).sum(axis=(0, 2, 3))
    ours = np.abs(channel_sum(x) - exact).max()
    numpy_error = np.abs(x.sum(axis=(0, 2, 3)) - exact).max()
    assert ours <= 2 * numpy_error + 1e-3
