"""Losses against torch.nn (value and gradient), stability, validation; cpu and fakecupy."""
from __future__ import annotations

import numpy
import pytest
import torch
import torch.nn.functional as F

import gpuconv.losses as L
from gpuconv.backend import device_of, to_device, to_numpy

TOL = {"float64": 1e-10, "float32": 1e-5}
N, K = 7, 5


def _close(actual, expected, dtype, what):
    actual = to_numpy(actual)
    expected = numpy.asarray(expected)
    rtol = TOL[dtype]
    atol = rtol * max(float(numpy.abs(expected).max(initial=0.0)), 1e-30)
    numpy.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def _run(loss, pred, target, device):
    """gpuconv value and grad (host copies); checks placement, dtype and unmodified inputs."""
    pred_d, target_d = to_device(pred, device), to_device(target, device)
    pred_copy, target_copy = pred.copy(), target.copy()
    value = loss(pred_d, target_d)
    assert tuple(value.shape) == () and device_of(value).kind == device
    assert value.dtype == pred.dtype
    grad = loss.backward()
    assert device_of(grad).kind == device
    assert grad.shape == pred.shape and grad.dtype == pred.dtype
    numpy.testing.assert_array_equal(to_numpy(pred_d), pred_copy)
    numpy.testing.assert_array_equal(to_numpy(target_d), target_copy)
    return to_numpy(value), to_numpy(grad)


def _torch(fn, pred, target):
    tp = torch.tensor(pred, requires_grad=True)
    tt = torch.tensor(target)
    value = fn(tp, tt)
    value.backward()
    return value.detach().numpy(), tp.grad.numpy()


def _check(loss, torch_fn, pred, target, device, dtype):
    value, grad = _run(loss, pred, target, device)
    ref_value, ref_grad = _torch(torch_fn, pred, target)
    _close(value, ref_value, dtype, f"{loss!r} value")
    _close(grad, ref_grad, dtype, f"{loss!r} gradient")
    return value, grad


def _logits(dtype, scale=3.0, seed=0):
    return (numpy.random.default_rng(seed).standard_normal((N, K)) * scale).astype(dtype)


def _labels(seed=1):
    return numpy.random.default_rng(seed).integers(0, K, N).astype(numpy.int64)


def _soft(dtype, seed=2):
    t = numpy.random.default_rng(seed).random((N, K))
    return (t / t.sum(axis=1, keepdims=True)).astype(dtype)


@pytest.fixture(params=["float64", "float32"])
def dtype(request):
    return request.param


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_integer_labels(device, dtype, smoothing):
    _check(L.SoftmaxCrossEntropy(label_smoothing=smoothing),
           lambda p, t: F.cross_entropy(p, t, label_smoothing=smoothing),
           _logits(dtype), _labels(), device, dtype)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_soft_targets(device, dtype, smoothing):
    _check(L.SoftmaxCrossEntropy(label_smoothing=smoothing),
           lambda p, t: F.cross_entropy(p, t, label_smoothing=smoothing),
           _logits(dtype), _soft(dtype), device, dtype)


def test_cross_entropy_one_hot_equals_integer_labels(device, dtype):
    labels = _labels()
    one_hot = numpy.eye(K, dtype=dtype)[labels]
    logits = _logits(dtype)
    v1, g1 = _run(L.SoftmaxCrossEntropy(0.1), logits, labels, device)
    v2, g2 = _run(L.SoftmaxCrossEntropy(0.1), logits, one_hot, device)
    _close(v2, v1, dtype, "value")
    _close(g2, g1, dtype, "gradient")


def test_cross_entropy_unnormalised_soft_targets(device):
    target = numpy.random.default_rng(3).random((N, K))  # rows do not sum to 1
    _check(L.SoftmaxCrossEntropy(), F.cross_entropy, _logits("float64"), target, device,
           "float64")


def test_bce_with_logits(device, dtype):
    pred = numpy.random.default_rng(4).standard_normal((N, 3)).astype(dtype) * 4
    target = numpy.random.default_rng(5).random((N, 3)).astype(dtype)
    _check(L.BCEWithLogits(), F.binary_cross_entropy_with_logits, pred, target, device, dtype)


def test_mse(device, dtype):
    pred = numpy.random.default_rng(6).standard_normal((N, 2, 3)).astype(dtype)
    target = numpy.random.default_rng(7).standard_normal((N, 2, 3)).astype(dtype)
    _check(L.MSE(), F.mse_loss, pred, target, device, dtype)


@pytest.mark.parametrize("delta", [1.0, 0.5])
def test_huber(device, dtype, delta):
    pred = numpy.random.default_rng(8).standard_normal((N, 4)).astype(dtype) * 2
    target = numpy.random.default_rng(9).standard_normal((N, 4)).astype(dtype)
    _check(L.Huber(delta), lambda p, t: F.huber_loss(p, t, delta=delta), pred, target,
           device, dtype)


def test_hinge(device, dtype):
    # scale 0.7 keeps every margin well away from the kink at 0
    _check(L.Hinge(), F.multi_margin_loss, _logits(dtype, 0.7), _labels(), device, dtype)


def test_hinge_has_active_and_inactive_margins(device):
    # guard against a test that passes trivially: both branches are exercised
    logits, labels = _logits("float64", 0.7), _labels()
    margins = 1 - logits[numpy.arange(N), labels][:, None] + logits
    margins[numpy.arange(N), labels] = 0
    assert (margins > 0).any() and (margins < 0).any()


@pytest.mark.parametrize("case", ["ce_hard", "ce_soft", "ce_smooth", "bce", "hinge"])
def test_stable_on_huge_logits(device, case):
    rng = numpy.random.default_rng(10)
    logits = rng.choice([-1e4, 1e4], size=(N, K)) + rng.standard_normal((N, K))
    labels = _labels()
    if case == "ce_hard":
        loss, fn, target = L.SoftmaxCrossEntropy(), F.cross_entropy, labels
    elif case == "ce_soft":
        loss, fn, target = L.SoftmaxCrossEntropy(), F.cross_entropy, _soft("float64")
    elif case == "ce_smooth":
        loss, target = L.SoftmaxCrossEntropy(0.1), labels
        fn = lambda p, t: F.cross_entropy(p, t, label_smoothing=0.1)  # noqa: E731
    elif case == "bce":
        loss, fn = L.BCEWithLogits(), F.binary_cross_entropy_with_logits
        target = rng.random((N, K))
    else:
        loss, fn, target = L.Hinge(), F.multi_margin_loss, labels
    for dtype in ("float64", "float32"):
        value, grad = _run(loss, logits.astype(dtype), target.astype(
            dtype if target.dtype.kind == "f" else target.dtype), device)
        assert numpy.isfinite(value) and numpy.isfinite(grad).all()
    _check(loss, fn, logits, target, device, "float64")


def test_loss_value_is_a_lazy_device_array(device):
    value = L.SoftmaxCrossEntropy()(to_device(_logits("float32"), device),
                                    to_device(_labels(), device))
    assert type(value).__module__ != "builtins" and hasattr(value, "shape")


# ---- validation -------------------------------------------------------------------

def test_out_of_range_numpy_labels_raise():
    for loss in (L.SoftmaxCrossEntropy(), L.Hinge()):
        with pytest.raises(ValueError, match=r"\[0, 4\].*\[0, 5\]"):
            loss(_logits("float64"), numpy.array([0, 1, 2, 3, 4, 5, 0]))
        with pytest.raises(ValueError, match="labels"):
            loss(_logits("float64"), numpy.array([0, 1, 2, 3, 4, -1, 0]))


def test_device_labels_checked_only_in_debug_mode(monkeypatch):
    pred = to_device(_logits("float64"), "fakecupy")
    bad = to_device(numpy.array([0, 1, 2, 3, 4, 9, 0]), "fakecupy")
    monkeypatch.delenv("GPUCONV_DEBUG", raising=False)
    try:  # no range check, no sync (documented); real CuPy wraps, the fake's numpy raises
        L.SoftmaxCrossEntropy()(pred, bad)
    except IndexError:
        pass
    with pytest.raises(ValueError, match="SoftmaxCrossEntropy"):
        L.SoftmaxCrossEntropy(check_labels=True)(pred, bad)
    monkeypatch.setenv("GPUCONV_DEBUG", "1")
    with pytest.raises(ValueError, match="Hinge"):
        L.Hinge()(pred, bad)


@pytest.mark.parametrize("loss, pred_shape, target_shape", [
    (L.SoftmaxCrossEntropy(), (N, K), (N + 1,)),
    (L.SoftmaxCrossEntropy(), (N, K), (N, K + 1)),
    (L.SoftmaxCrossEntropy(), (N, K, 2), (N,)),
    (L.BCEWithLogits(), (N, 1), (N,)),
    (L.MSE(), (N, 3), (N, 2)),
    (L.Huber(), (N, 3), (3, N)),
    (L.Hinge(), (N, K), (N, 1)),
])
def test_shape_mismatch_names_loss_and_shapes(device, loss, pred_shape, target_shape):
    pred = to_device(numpy.zeros(pred_shape), device)
    target = numpy.zeros(target_shape, dtype=numpy.int64 if len(target_shape) == 1 or
                         isinstance(loss, L.Hinge) else numpy.float64)
    with pytest.raises(ValueError) as info:
        loss(pred, to_device(target, device))
    msg = str(info.value)
    bad = pred_shape if len(pred_shape) == 3 else target_shape  # the shape that is wrong
    assert loss.name in msg and str(tuple(bad)) in msg


def test_float_labels_and_mixed_devices_raise():
    with pytest.raises(TypeError, match="integers"):
        L.SoftmaxCrossEntropy()(_logits("float64"), numpy.zeros(N))
    with pytest.raises(TypeError, match="different devices"):
        L.SoftmaxCrossEntropy()(to_device(_logits("float64"), "fakecupy"), _labels())
    with pytest.raises(RuntimeError, match="before forward"):
        L.MSE().backward()


def test_get_by_name():
    assert isinstance(L.get("cross_entropy"), L.SoftmaxCrossEntropy)
    assert L.get("huber", delta=2.0).delta == 2.0
    assert isinstance(L.get("BCEWithLogits"), L.BCEWithLogits)
    loss = L.MSE()
    assert L.get(loss) is loss
    with pytest.raises(ValueError, match="unknown loss"):
        L.get("nope")
