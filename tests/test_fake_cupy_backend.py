"""The whole layer suite on the strict fake CuPy (and, trivially, the CPU): same results.

Each case of layer_checks.CASES runs forward + backward on the CPU and on the
``device`` fixture; outputs, input gradients and parameter gradients must
match, stay on the device, and keep their dtype. The fake raises wherever
CuPy would (NumPy arrays meeting device arrays, implicit conversions, names
CuPy lacks), so a pass here means no layer mixes host and device arrays.
Also: the seed CNN on a CIFAR-shaped batch of 128, ops-level im2col/pooling
paths, and the error messages for device, dtype and shape mistakes.
"""
from __future__ import annotations

import inspect

import numpy
import pytest

import gpuconv
from gpuconv.backend import device_of, get_array_module, get_device, to_device, to_numpy
from gpuconv.containers import Sequential
from gpuconv.layers import (AvgPool2D, BatchNorm1d, BatchNorm2d, Conv1D, Conv2D, Dense, Flatten,
                            GlobalAvgPool2D, MaxPool2D, ReLU, Residual, Softmax)
from gpuconv.ops import conv as conv_ops
from gpuconv.ops import pooling as pool_ops
from layer_checks import CASE_IDS, CASES, make_input, make_layer, seed_cnn, tie_free
from conftest import device_fixture_with_second_gpu, on_device  # noqa: F401

device = device_fixture_with_second_gpu()


def host(a):
    return to_numpy(a)


def assert_on(a, device: str) -> None:
    assert device_of(a) == get_device(device), f"array on {device_of(a)}, expected {device}"


def run_on(layer, x, dy, device, reseed=None):
    layer.to(device)
    xd, dyd = to_device(x, device), to_device(dy, device)
    layer.zero_grad()
    if reseed is not None:
        gpuconv.seed(reseed)
    y = layer.forward(xd)
    dx = layer.backward(dyd)
    assert_on(y, device)
    assert_on(dx, device)
    for name, p in layer.named_parameters():
        assert_on(p.data, device)
        assert_on(p.grad, device)
    for name, b in layer.named_buffers():
        assert_on(b, device)
    return (host(y), host(dx), {n: host(p.grad) for n, p in layer.named_parameters()},
            {n: host(b) for n, b in layer.named_buffers()})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_layer_on_device_matches_cpu(case, dtype, device):
    rng = numpy.random.default_rng(3)
    x = make_input(case, rng, numpy.dtype(dtype))
    probe = make_layer(case, dtype, seed=5)  # only for the output shape
    dy = rng.standard_normal(probe.forward(x).shape).astype(dtype)
    ref_layer = make_layer(case, dtype, seed=5)
    y0, dx0, g0, b0 = run_on(ref_layer, x, dy, "cpu", case.reseed)

    layer = make_layer(case, dtype, seed=5)
    x_before = x.copy()
    y1, dx1, g1, b1 = run_on(layer, x, dy, device, case.reseed)
    assert numpy.array_equal(x, x_before)
    assert y1.dtype == dtype and dx1.dtype == dtype
    rtol = 1e-6 if dtype == "float32" else 1e-12
    numpy.testing.assert_allclose(y1, y0, rtol=rtol, atol=rtol, err_msg="forward")
    numpy.testing.assert_allclose(dx1, dx0, rtol=rtol, atol=rtol, err_msg="input gradient")
    assert g1.keys() == g0.keys()
    for name in g0:
        numpy.testing.assert_allclose(g1[name], g0[name], rtol=rtol, atol=rtol, err_msg=name)
    for name in b0:
        numpy.testing.assert_allclose(b1[name], b0[name], rtol=rtol, atol=rtol, err_msg=name)
    # eval mode too (BatchNorm running stats, dropout identity)
    layer.eval()
    ref_layer.eval()
    ye = layer.forward(to_device(x, device))
    assert_on(ye, device)
    numpy.testing.assert_allclose(host(ye), ref_layer.forward(x), rtol=rtol, atol=rtol,
                                  err_msg="eval forward")


def test_seed_cnn_batch_128_numpy_vs_fakecupy():
    """The seed CNN, float32, a CIFAR-shaped batch of 128: forward and backward agree."""
    device = "fakecupy"
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((128, 3, 32, 32)).astype(numpy.float32)
    dy = rng.standard_normal((128, 10)).astype(numpy.float32)
    gpuconv.seed(1)
    ref = seed_cnn()
    y0, dx0, g0, b0 = run_on(ref, x, dy, "cpu")
    gpuconv.seed(1)
    model = seed_cnn()
    y1, dx1, g1, b1 = run_on(model, x, dy, device)
    assert y1.shape == (128, 10) and dx1.shape == x.shape
    numpy.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)
    numpy.testing.assert_allclose(dx1, dx0, rtol=1e-5, atol=1e-6)
    # a conv bias feeding a training-mode BatchNorm has an exact gradient of 0 (BN takes
    # the mean out): float32 leaves roundoff (~1e-5, against ~10 for the other gradients)
    # that changes in every digit with the summation order, and the device sums BN's
    # products in another order than NumPy's einsum: there it must be as near 0 as on the CPU
    cancelled = {f"{i}.bias" for i, (a, b) in enumerate(zip(model.layers, model.layers[1:]))
                 if isinstance(a, Conv2D) and isinstance(b, BatchNorm2d)}
    assert cancelled == {"0.bias", "4.bias", "8.bias"}
    for name in g0:
        scale = numpy.abs(g0[name]).max()
        if name in cancelled:
            assert numpy.abs(g1[name]).max() <= 4 * scale, name
            continue
        numpy.testing.assert_allclose(g1[name], g0[name], rtol=1e-5, atol=1e-5 * scale,
                                      err_msg=name)
    for name in b0:
        numpy.testing.assert_allclose(b1[name], b0[name], rtol=1e-5, atol=1e-6, err_msg=name)


# ---- ops-level paths ------------------------------------------------------------------------

def _methods() -> list[str]:
    params = inspect.signature(conv_ops.conv2d_forward).parameters
    return list(getattr(conv_ops, "METHODS", ("auto",))) if "method" in params else ["auto"]


@pytest.mark.parametrize("kernel,padding,dilation,hw", [
    ((3, 3), (1, 1, 1, 1), (1, 1), (6, 7)),
    ((2, 3), (0, 1, 2, 0), (2, 1), (7, 5)),
    ((1, 1), (0, 0, 0, 0), (1, 1), (3, 4)),
    ((3, 2), (2, 2, 1, 1), (1, 2), (4, 4)),
])
def test_all_conv_column_methods_agree_with_the_im2col_path(kernel, padding, dilation, hw, device):
    """Every conv method (e.g. row runs for stride 1) equals the general im2col path."""
    rng = numpy.random.default_rng(4)
    x = rng.standard_normal((2, 3) + hw)
    w = rng.standard_normal((4, 3) + kernel)
    b = rng.standard_normal(4)
    xd, wd, bd = (to_device(a, device) for a in (x, w, b))
    results = {}
    for method in _methods():
        kwargs = {} if method == "auto" and len(_methods()) == 1 else {"method": method}
        with on_device(device):  # single ops run on the current device, as CuPy's functions
            y, cols = conv_ops.conv2d_forward(xd, wd, bd, (1, 1), padding, dilation, **kwargs)
            dy = to_device(numpy.random.default_rng(5).standard_normal(tuple(y.shape)), device)
            grads = conv_ops.conv2d_backward(dy, cols, wd, x.shape, (1, 1), padding, dilation,
                                             True, **kwargs)
        results[method] = [host(y)] + [host(g) for g in grads]
    # reference: direct summation over kernel offsets (independent of both im2col layouts)
    top, bottom, left, right = padding
    xp_ = numpy.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh = xp_.shape[2] - dilation[0] * (kernel[0] - 1)
    ow = xp_.shape[3] - dilation[1] * (kernel[1] - 1)
    ref = numpy.zeros((2, 4, oh, ow)) + b[:, None, None]
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            patch = xp_[:, :, i * dilation[0]:i * dilation[0] + oh, j * dilation[1]:j * dilation[1] + ow]
            ref += numpy.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    for method, (y, dx, dw, db) in results.items():
        numpy.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12, err_msg=method)
        first = next(iter(results.values()))
        for got, want, what in zip((dx, dw, db), first[1:], ("dx", "dw", "db")):
            numpy.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12,
                                          err_msg=f"{method} {what}")


@pytest.mark.parametrize("kernel,stride,padding,hw", [
    ((2, 2), (2, 2), (0, 0, 0, 0), (4, 6)),   # tiling fast path
    ((2, 2), (2, 2), (0, 0, 0, 0), (5, 7)),   # leftover rows/cols: general path
    ((3, 3), (2, 2), (1, 1, 1, 1), (7, 6)),
    ((3, 2), (1, 2), (1, 1, 1, 1), (5, 5)),
])
def test_pooling_ops_on_device(kernel, stride, padding, hw, device):
    # single ops run on the current device (as CuPy's functions): the test enters it
    with on_device(device):
        rng = numpy.random.default_rng(6)
        x = tie_free((2, 3) + hw, rng)
        y0, arg0 = pool_ops.max_pool2d_forward(x, kernel, stride, padding)
        y1, arg1 = pool_ops.max_pool2d_forward(to_device(x, device), kernel, stride, padding)
        numpy.testing.assert_array_equal(host(y1), y0)
        numpy.testing.assert_array_equal(host(arg1), arg0)
        dy = rng.standard_normal(y0.shape)
        numpy.testing.assert_array_equal(
            host(pool_ops.max_pool2d_backward(to_device(dy, device), arg1, x.shape, kernel, stride,
                                              padding)),
            pool_ops.max_pool2d_backward(dy, arg0, x.shape, kernel, stride, padding))
        numpy.testing.assert_allclose(
            host(pool_ops.avg_pool2d_forward(to_device(x, device), kernel, stride, padding)),
            pool_ops.avg_pool2d_forward(x, kernel, stride, padding), rtol=1e-12)
        numpy.testing.assert_allclose(
            host(pool_ops.avg_pool2d_backward(to_device(dy, device), x.shape, kernel, stride, padding)),
            pool_ops.avg_pool2d_backward(dy, x.shape, kernel, stride, padding), rtol=1e-12)


# ---- moving models --------------------------------------------------------------------------

def test_to_device_and_back_roundtrip(device):
    gpuconv.seed(2)
    model = Sequential([Conv2D(2, 3, 3), BatchNorm2d(3), ReLU(), Flatten(), Dense(12, 2)])
    before = {k: host(v).copy() for k, v in model.state_dict().items()}
    model.to(device)
    assert model.device == get_device(device)
    for v in model.state_dict().values():
        assert_on(v, device)
    model.to("cpu")
    for k, v in model.state_dict().items():
        assert isinstance(v, numpy.ndarray)
        numpy.testing.assert_array_equal(v, before[k])


def test_load_state_dict_from_host_into_device_model(device):
    gpuconv.seed(3)
    src = Sequential([Conv2D(2, 3, 3), BatchNorm2d(3), Dense(3, 2)])
    src.layers[1].running_mean[...] = 1.5
    gpuconv.seed(4)
    dst = Sequential([Conv2D(2, 3, 3), BatchNorm2d(3), Dense(3, 2)]).to(device)
    dst.load_state_dict(src.state_dict())
    for k, v in dst.state_dict().items():
        assert_on(v, device)
        numpy.testing.assert_array_equal(host(v), src.state_dict()[k])


def test_astype_keeps_device(device):
    layer = Conv2D(2, 2, 3).to(device).astype("float64")
    assert layer.dtype == numpy.float64
    assert_on(layer.weight.data, device)
    assert_on(layer.weight.grad, device)
    assert layer.weight.grad.dtype == numpy.float64


# ---- error messages ---------------------------------------------------------------------------

DEVICE_CHECKED = [
    pytest.param(lambda: Conv2D(3, 2, 3), (2, 3, 5, 5), "Conv2D", id="conv2d"),
    pytest.param(lambda: Conv1D(3, 2, 3), (2, 3, 5), "Conv1D", id="conv1d"),
    pytest.param(lambda: Dense(4, 2), (2, 4), "Dense", id="dense"),
    pytest.param(lambda: BatchNorm1d(4), (3, 4), "BatchNorm1d", id="bn1d"),
    pytest.param(lambda: BatchNorm2d(3), (2, 3, 2, 2), "BatchNorm2d", id="bn2d"),
    pytest.param(lambda: Sequential([Conv2D(3, 2, 3), ReLU()]), (2, 3, 5, 5), "Conv2D",
                 id="sequential"),
    pytest.param(lambda: Residual([Conv2D(3, 3, 3, padding=1)]), (2, 3, 4, 4), "Conv2D",
                 id="residual"),
]


@pytest.mark.parametrize("make,shape,name", DEVICE_CHECKED)
def test_numpy_input_to_device_layer_raises_type_error_naming_the_layer(make, shape, name):
    layer = make().to("fakecupy")
    x = numpy.ones(shape, numpy.float32)
    with pytest.raises(TypeError, match=name) as info:
        layer.forward(x)
    assert "numpy" in str(info.value) and ".to(" in str(info.value)


@pytest.mark.parametrize("make,shape,name", DEVICE_CHECKED)
def test_device_input_to_cpu_layer_raises_type_error_naming_the_layer(make, shape, name):
    layer = make()
    x = to_device(numpy.ones(shape, numpy.float32), "fakecupy")
    with pytest.raises(TypeError, match=name):
        layer.forward(x)


@pytest.mark.parametrize("make,shape,name", DEVICE_CHECKED)
def test_float64_input_to_float32_layer_raises_type_error(make, shape, name, device):
    layer = make().to(device)
    x = to_device(numpy.ones(shape, numpy.float64), device)
    with pytest.raises(TypeError) as info:
        layer.forward(x)
    message = str(info.value)
    assert name in message and "float64" in message and "float32" in message, message


@pytest.mark.parametrize("make,bad_shape,name,expected", [
    (lambda: Conv2D(3, 2, 3), (2, 4, 5, 5), "Conv2D", "3 channels"),
    (lambda: Conv2D(3, 2, 3), (3, 5, 5), "Conv2D", "4-D"),
    (lambda: Conv2D(3, 2, 5), (1, 3, 4, 6), "Conv2D", "smaller than the dilated kernel"),
    (lambda: Conv1D(2, 2, 3), (2, 3, 5), "Conv1D", "2 channels"),
    (lambda: Dense(4, 2), (2, 5), "Dense", "4 channels/features"),
    (lambda: Dense(4, 2), (2, 2, 2), "Dense", "2-D"),
    (lambda: BatchNorm1d(4), (3, 5), "BatchNorm1d", "4 channels"),
    (lambda: BatchNorm2d(3), (2, 4, 2, 2), "BatchNorm2d", "3 channels"),
    (lambda: BatchNorm2d(3), (1, 3, 1, 1), "BatchNorm2d", "more than one value"),
    (lambda: MaxPool2D(3), (1, 2, 2, 5), "MaxPool2D", "smaller than the pooling window"),
    (lambda: AvgPool2D(2), (2, 4, 4), "AvgPool2D", "4-D"),
    (lambda: GlobalAvgPool2D(), (2, 4), "GlobalAvgPool2D", "4-D"),
    (lambda: Flatten(), (3,), "Flatten", "batch axis"),
    (lambda: Softmax(axis=2), (2, 3), "Softmax", "axis 2"),
    (lambda: Residual([Conv2D(2, 3, 1)]), (1, 2, 3, 3), "Residual", "shape"),
])
def test_shape_errors_raise_value_error_naming_layer_and_shapes(make, bad_shape, name, expected,
                                                                device):
    layer = make().to(device)
    x = to_device(numpy.ones(bad_shape, numpy.float32), device)
    with pytest.raises(ValueError) as info:
        layer.forward(x)
    message = str(info.value)
    assert name in message and expected in message, message
    actual = (str(tuple(bad_shape)), str(tuple(bad_shape[2:])))  # full or spatial shape
    assert any(a in message for a in actual), f"actual shape missing: {message}"


@pytest.mark.parametrize("make,shape", [
    (lambda: Conv2D(2, 3, 3), (2, 2, 5, 5)), (lambda: Dense(4, 2), (3, 4)),
    (lambda: MaxPool2D(2), (1, 2, 4, 4)), (lambda: AvgPool2D(2), (1, 2, 4, 4)),
    (lambda: BatchNorm2d(2), (2, 2, 3, 3)), (lambda: ReLU(), (2, 3)),
    (lambda: GlobalAvgPool2D(), (2, 3, 2, 2)),
])
def test_backward_with_wrong_dy_shape_raises_value_error(make, shape, device):
    layer = make().to(device)
    y = layer.forward(to_device(numpy.ones(shape, numpy.float32), device))
    bad = to_device(numpy.ones(tuple(y.shape[:-1]) + (y.shape[-1] + 1,), numpy.float32), device)
    with pytest.raises(ValueError) as info:
        layer.backward(bad)
    message = str(info.value)
    assert type(layer).__name__ in message
    assert f"expected dy of shape {tuple(y.shape)}, got {tuple(bad.shape)}" in message, message


def test_backward_before_forward_raises():
    for layer in (Conv2D(2, 2, 3), Dense(2, 2), MaxPool2D(2), BatchNorm1d(2), ReLU()):
        with pytest.raises(RuntimeError, match=type(layer).__name__):
            layer.backward(numpy.ones((1, 2, 1, 1), numpy.float32))


def test_fake_device_model_rejects_mixed_state():
    """get_array_module refuses to combine device and host arrays (the mixing guard)."""
    a = to_device(numpy.ones(3), "fakecupy")
    with pytest.raises(TypeError, match="different devices"):
        get_array_module(a, numpy.ones(3))


# ---- airbench building blocks on the device -----------------------------------------------------

from gpuconv.layers import GELU, Multiply  # noqa: E402


def _airbench_block(dtype):
    whiten = Conv2D(3, 12, 2, bias_init="Normal", dtype=dtype).freeze("weight")
    return Sequential([whiten, GELU(), Conv2D(12, 4, 3, padding="same", bias=False, dtype=dtype),
                       MaxPool2D(2), BatchNorm2d(4, eps=1e-12, momentum=0.4, dtype=dtype)
                       .freeze("weight"), GELU("tanh"), Flatten(), Dense(4 * 3 * 3, 5, bias=False,
                                                                        dtype=dtype),
                       Multiply(1 / 9)])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("make,shape", [
    (lambda dtype: GELU(), (2, 3, 4, 5)), (lambda dtype: GELU("tanh"), (3, 7)),
    (lambda dtype: Multiply(1 / 9), (4, 10)),
    (lambda dtype: Conv2D(2, 3, 3, padding=1, dtype=dtype).freeze("weight"), (2, 2, 5, 5)),
    (lambda dtype: BatchNorm2d(3, dtype=dtype).freeze("weight"), (2, 3, 3, 3)),
    (_airbench_block, (2, 3, 7, 7)),
], ids=["gelu", "gelu-tanh", "multiply", "conv-frozen-weight", "bn-frozen-weight",
        "airbench-block"])
def test_airbench_layers_on_device_match_cpu(make, shape, dtype, device):
    rng = numpy.random.default_rng(8)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    gpuconv.seed(9)
    ref = make(dtype)
    dy = rng.standard_normal(ref.forward(x).shape).astype(dtype)
    y0, dx0, g0, _ = run_on(ref, x, dy, "cpu")
    gpuconv.seed(9)
    layer = make(dtype)
    y1, dx1, g1, _ = run_on(layer, x, dy, device)
    rtol = 1e-6 if dtype == "float32" else 1e-12
    numpy.testing.assert_allclose(y1, y0, rtol=rtol, atol=rtol)
    numpy.testing.assert_allclose(dx1, dx0, rtol=rtol, atol=rtol)
    for name in g0:
        numpy.testing.assert_allclose(g1[name], g0[name], rtol=rtol, atol=rtol, err_msg=name)
    assert layer.frozen_names() == ref.frozen_names()
    for name in layer.frozen_names():
        assert not g1[name].any()


def test_patch_whitening_on_device_equals_cpu(device):
    images = numpy.random.default_rng(10).standard_normal((30, 3, 6, 7)).astype(numpy.float32)
    on_cpu = gpuconv.init.patch_whitening(images, max_images=20, seed=3)
    on_device = gpuconv.init.patch_whitening(to_device(images, device), max_images=20, seed=3)
    assert_on(on_device, device)
    assert on_device.dtype == numpy.float32 and tuple(on_device.shape) == (24, 3, 2, 2)
    numpy.testing.assert_allclose(host(on_device), on_cpu, rtol=1e-6, atol=1e-6)
