"""gpuconv.no_grad: inference forwards keep nothing for backward and give the same outputs."""
import threading

import numpy as np
import pytest

import gpuconv
from gpuconv.backend import to_device, to_numpy
from gpuconv.models.presets import build_preset
from gpuconv.layers import BatchNorm2d, MaxPool2D, is_grad_enabled, no_grad
from gpuconv.ops.pooling import max_pool2d_forward
from conftest import device_fixture_with_second_gpu, on_device  # noqa: F401

device = device_fixture_with_second_gpu()


def test_no_grad_is_nested_restored_and_thread_local():
    assert is_grad_enabled()
    seen = []
    with gpuconv.no_grad():
        assert not is_grad_enabled()
        with no_grad():
            assert not is_grad_enabled()
        assert not is_grad_enabled()
        worker = threading.Thread(target=lambda: seen.append(is_grad_enabled()))
        worker.start()
        worker.join()
    assert is_grad_enabled() and seen == [True]
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            1 / 0
    assert is_grad_enabled()


@pytest.mark.parametrize("kernel,stride,padding", [((2, 2), (2, 2), (0, 0, 0, 0)),
                                                   ((3, 2), (3, 2), (0, 0, 0, 0)),
                                                   ((3, 3), (2, 2), (1, 1, 1, 1))])
def test_max_pool_without_argmax_gives_the_same_maxima(device, kernel, stride, padding):
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((3, 4, 12, 12)), 0).astype(np.float32)  # ties at 0
    xd = to_device(x, device)
    with on_device(device):  # single ops run on the current device, as CuPy's functions
        y, argmax = max_pool2d_forward(xd, kernel, stride, padding)
        y_fast, none = max_pool2d_forward(xd, kernel, stride, padding, need_argmax=False)
    assert none is None and argmax is not None
    np.testing.assert_array_equal(to_numpy(y_fast), to_numpy(y))
    assert to_numpy(y_fast).flags.c_contiguous


@pytest.mark.parametrize("layer", [MaxPool2D(2), BatchNorm2d(1), BatchNorm2d(1).eval()],
                         ids=["maxpool", "batchnorm-train", "batchnorm-eval"])
def test_backward_after_a_no_grad_forward_raises(layer):
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32)
    layer.forward(x)  # a cache from an earlier forward must not survive
    with no_grad():
        y = layer.forward(x)
    with pytest.raises(RuntimeError, match="no_grad"):
        layer.backward(np.ones_like(y))


def test_seed_cnn_eval_outputs_are_identical_with_and_without_no_grad(device):
    model = build_preset("seed-cnn").to(device).eval()
    x = to_device(np.random.default_rng(1).standard_normal((4, 3, 32, 32), dtype=np.float32),
                  device)
    with_cache = to_numpy(model.forward(x))
    with no_grad():
        without = to_numpy(model.forward(x))
    np.testing.assert_array_equal(without, with_cache)
    assert all(layer._cache is None for layer in model if isinstance(layer, MaxPool2D))
