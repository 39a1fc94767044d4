"""channel_sum / channel_dot: per-channel sums over batch and spatial axes, on CPU and the strict
fake CuPy."""
import fakecupy
import numpy as np
import pytest

from gpuconv.backend import to_device, to_numpy
from gpuconv.layers import BatchNorm1d, BatchNorm2d, SyncBatchNorm2d
from gpuconv.ops.reduce import channel_dot, channel_sum


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


@pytest.mark.parametrize("shape", [(7, 3), (5, 4, 9), (6, 3, 5, 7), (2, 3, 2, 3, 2), (0, 3, 4, 4)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_channel_dot_matches_float64_sum_of_the_product(device, shape, dtype):
    rng = np.random.default_rng(2)
    a, b = ((rng.standard_normal(shape) + 1).astype(dtype) for _ in range(2))
    got = channel_dot(to_device(a, device), to_device(b, device))
    axes = (0,) + tuple(range(2, a.ndim))
    expected = (a.astype(np.float64) * b).sum(axis=axes)
    assert got.shape == (shape[1],) and got.dtype == np.dtype(dtype)
    rtol = 1e-5 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(to_numpy(got), expected, rtol=rtol, atol=rtol)


class _NoEinsum:
    """Stands in for the fake CuPy's einsum: CuPy's generic einsum is slow for these sums
    (transposed copies and an m=n=1 batched GEMM), so the device path must not call it."""

    def __call__(self, *args, **kwargs):
        raise AssertionError(f"einsum{args[:1]} called on the device")


class _TwoRanksOfOne:
    """A size-2 communicator whose allreduce leaves the sums as they are (enough to run
    SyncBatchNorm's synchronised path)."""

    size = 2

    def allreduce_sum(self, arrays):
        return list(arrays)


def test_batchnorm_on_the_device_sums_products_without_einsum(monkeypatch):
    monkeypatch.setattr(fakecupy.xp, "einsum", _NoEinsum(), raising=False)
    rng = np.random.default_rng(3)
    for layer, shape in [(BatchNorm2d(4), (6, 4, 3, 5)), (BatchNorm1d(4), (6, 4)),
                         (SyncBatchNorm2d(4, comm=_TwoRanksOfOne()), (6, 4, 3, 5))]:
        layer.to(fakecupy.DEVICE)
        x = to_device(rng.standard_normal(shape).astype(np.float32), fakecupy.DEVICE)
        layer.forward(x)
        layer.backward(x)
        assert np.isfinite(to_numpy(layer.weight.grad)).all()
    with pytest.raises(AssertionError, match="einsum"):  # the stand-in does fire
        fakecupy.xp.einsum("ij->", x)


def test_channel_dot_on_numpy_is_one_einsum(monkeypatch):
    # the CPU keeps einsum: no temporary, 2-3x faster there than channel_sum of the product
    calls = []
    real = np.einsum
    monkeypatch.setattr(np, "einsum", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    x = np.ones((2, 3, 4, 5), dtype=np.float32)
    np.testing.assert_array_equal(channel_dot(x, x), np.full(3, 40, dtype=np.float32))
    assert calls == ["nchw,nchw->c"]
