"""Losses against torch.nn (value and gradient), stability, validation; cpu and fakecupy."""
from __future__ import annotations

import numpy
import pytest
import torch
import torch.nn.functional as F

import gpuconv.losses as L
from gpuconv.backend import device_of, get_device, to_device, to_numpy
from conftest import device_fixture_with_second_gpu, on_device  # noqa: F401

device = device_fixture_with_second_gpu()

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
    assert tuple(value.shape) == () and device_of(value) == get_device(device)
    assert value.dtype == pred.dtype
    grad = loss.backward()
    assert device_of(grad) == get_device(device)
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


# ---- reductions, CrossEntropy(from_logits=False), NLLLoss ------------------------------

REDUCTIONS = ["mean", "sum", "none"]


def _upstream(loss_shape, seed=11):
    """A random upstream gradient for reduction='none' (else None: d(value)/d(value) = 1)."""
    return numpy.random.default_rng(seed).standard_normal(loss_shape)


def _check_reduction(loss, torch_fn, pred, target, device, reduction):
    """gpuconv vs torch for one reduction: value and d(pred) (an upstream gradient for 'none')."""
    pred_d, target_d = to_device(pred, device), to_device(target, device)
    value = loss(pred_d, target_d)
    assert device_of(value) == get_device(device) and value.dtype == pred.dtype
    tp = torch.tensor(pred, requires_grad=True)
    ref = torch_fn(tp, torch.tensor(target))
    assert tuple(value.shape) == tuple(ref.shape)
    if reduction == "none":
        w = _upstream(tuple(ref.shape))
        ref.backward(torch.tensor(w))
        grad = loss.backward(to_device(w, device))
    else:
        ref.backward()
        grad = loss.backward()
    assert device_of(grad) == get_device(device) and grad.shape == pred.shape
    _close(value, ref.detach().numpy(), "float64", f"{loss!r} value")
    _close(grad, tp.grad.numpy(), "float64", f"{loss!r} gradient")
    return to_numpy(value), to_numpy(grad)


def _finite_differences(loss, pred, target, weight=None, h=1e-6):
    """Central differences of sum(weight * loss(pred)) (weight None: the value itself)."""
    def f(x):
        value = to_numpy(loss(x, target))
        return float((value * weight).sum() if weight is not None else value)

    numeric = numpy.zeros_like(pred)
    for idx in numpy.ndindex(pred.shape):
        up, down = pred.copy(), pred.copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (f(up) - f(down)) / (2 * h)
    return numeric


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("soft", [False, True], ids=["labels", "soft"])
def test_cross_entropy_reductions_match_torch(device, reduction, smoothing, soft):
    target = _soft("float64") if soft else _labels()
    for loss in (L.SoftmaxCrossEntropy(smoothing, reduction=reduction),
                 L.CrossEntropy(from_logits=True, label_smoothing=smoothing,
                                reduction=reduction)):
        _check_reduction(loss, lambda p, t: F.cross_entropy(
            p, t, label_smoothing=smoothing, reduction=reduction),
            _logits("float64"), target, device, reduction)


def test_airbench_loss_is_the_summed_label_smoothed_cross_entropy(device):
    """airbench94: CrossEntropyLoss(label_smoothing=0.2, reduction='none')(...).sum()."""
    logits, labels = _logits("float64"), _labels()
    loss = L.CrossEntropy(label_smoothing=0.2, reduction="sum")
    value, grad = _check_reduction(
        loss, lambda p, t: torch.nn.CrossEntropyLoss(label_smoothing=0.2,
                                                     reduction="none")(p, t).sum(),
        logits, labels, device, "sum")
    mean_value, mean_grad = _run(L.CrossEntropy(label_smoothing=0.2), logits, labels, device)
    numpy.testing.assert_allclose(value, N * mean_value, rtol=1e-12)
    numpy.testing.assert_allclose(grad, N * mean_grad, rtol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss_matches_torch(device, reduction):
    log_probs = torch.log_softmax(torch.tensor(_logits("float64")), 1).numpy()
    _check_reduction(L.NLLLoss(reduction=reduction),
                     lambda p, t: F.nll_loss(p, t, reduction=reduction),
                     log_probs, _labels(), device, reduction)
    # raw scores too: torch's nll_loss does not require normalised inputs
    _check_reduction(L.NLLLoss(reduction=reduction),
                     lambda p, t: F.nll_loss(p, t, reduction=reduction),
                     _logits("float64"), _labels(), device, reduction)


def test_nll_of_log_softmax_equals_cross_entropy(device):
    logits, labels = _logits("float64"), _labels()
    log_probs = torch.log_softmax(torch.tensor(logits), 1).numpy()
    v1, _ = _run(L.NLLLoss(reduction="sum"), log_probs, labels, device)
    v2, _ = _run(L.SoftmaxCrossEntropy(reduction="sum"), logits, labels, device)
    numpy.testing.assert_allclose(v1, v2, rtol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["bce", "mse", "huber", "hinge"])
def test_other_losses_reductions_match_torch(device, reduction, name):
    rng = numpy.random.default_rng(12)
    if name == "bce":
        loss, fn = L.BCEWithLogits(reduction=reduction), F.binary_cross_entropy_with_logits
        pred, target = rng.standard_normal((N, 3)) * 4, rng.random((N, 3))
    elif name == "mse":
        loss, fn = L.MSE(reduction=reduction), F.mse_loss
        pred, target = rng.standard_normal((N, 2, 3)), rng.standard_normal((N, 2, 3))
    elif name == "huber":
        loss = L.Huber(0.5, reduction=reduction)
        fn = lambda p, t, reduction: F.huber_loss(p, t, delta=0.5, reduction=reduction)  # noqa
        pred, target = rng.standard_normal((N, 4)) * 2, rng.standard_normal((N, 4))
    else:
        loss, fn = L.Hinge(reduction=reduction), F.multi_margin_loss
        pred, target = _logits("float64", 0.7), _labels()
    _check_reduction(loss, lambda p, t: fn(p, t, reduction=reduction), pred, target, device,
                     reduction)


def keras_categorical_crossentropy(target, output, epsilon=1e-7):
    """Keras's formula for probabilities (keras/src/backend/numpy/nn.py,
    categorical_crossentropy with from_logits=False), in numpy: per-sample losses."""
    output = output / numpy.sum(output, -1, keepdims=True)
    output = numpy.clip(output, epsilon, 1.0 - epsilon)
    return -numpy.sum(target * numpy.log(output), -1)


def _keras_torch(target, epsilon=1e-7):
    """The same formula in torch, for autograd (clamp passes no gradient where it clips)."""
    def fn(p, _unused):
        q = torch.clamp(p / p.sum(-1, keepdim=True), epsilon, 1.0 - epsilon)
        return -(torch.tensor(target) * torch.log(q)).sum(-1)
    return fn


def _probabilities(seed=13, zero=False):
    """Unnormalised positive rows (Keras renormalises); ``zero``: a 0 entry, clipped."""
    p = numpy.random.default_rng(seed).random((N, K)) + 0.05
    if zero:
        p[0, 1] = 0.0
        p[2, 3] = 1e-12
    return p


def _smoothed(target, smoothing):
    return target * (1.0 - smoothing) + smoothing / K


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("soft", [False, True], ids=["labels", "soft"])
@pytest.mark.parametrize("zero", [False, True], ids=["positive", "with-zeros"])
def test_cross_entropy_on_probabilities_matches_keras(device, reduction, smoothing, soft, zero):
    probs = _probabilities(zero=zero)
    target = _soft("float64") if soft else _labels()
    dense = _smoothed(target if soft else numpy.eye(K)[target], smoothing)
    per_sample = keras_categorical_crossentropy(dense, probs)
    expected = {"mean": per_sample.mean(), "sum": per_sample.sum(), "none": per_sample}
    loss = L.CrossEntropy(from_logits=False, label_smoothing=smoothing, reduction=reduction)
    value, grad = _check_reduction(
        loss, lambda p, t: {"mean": torch.mean, "sum": torch.sum, "none": lambda x: x}[
            reduction](_keras_torch(dense)(p, t)), probs, target, device, reduction)
    _close(value, expected[reduction], "float64", "Keras value")
    assert numpy.isfinite(grad).all()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", ["logits", "logits-soft", "probabilities", "nll", "hinge",
                                  "bce", "huber", "mse"])
def test_gradients_match_finite_differences(reduction, case):
    rng = numpy.random.default_rng(14)
    labels = _labels()
    if case == "logits":
        loss, pred, target = L.CrossEntropy(label_smoothing=0.2, reduction=reduction), \
            _logits("float64"), labels
    elif case == "logits-soft":
        loss, pred, target = L.CrossEntropy(label_smoothing=0.1, reduction=reduction), \
            _logits("float64"), _soft("float64")
    elif case == "probabilities":  # entries well inside the clip range
        loss, pred, target = L.CrossEntropy(from_logits=False, label_smoothing=0.2,
                                            reduction=reduction), _probabilities(), labels
    elif case == "nll":
        loss, pred, target = L.NLLLoss(reduction=reduction), _logits("float64"), labels
    elif case == "hinge":
        loss, pred, target = L.Hinge(reduction=reduction), _logits("float64", 0.7), labels
    elif case == "bce":
        loss, pred, target = L.BCEWithLogits(reduction=reduction), \
            rng.standard_normal((N, 3)), rng.random((N, 3))
    elif case == "huber":
        loss, pred, target = L.Huber(0.5, reduction=reduction), \
            rng.standard_normal((N, 3)) * 2, rng.standard_normal((N, 3))
    else:
        loss, pred, target = L.MSE(reduction=reduction), \
            rng.standard_normal((N, 3)), rng.standard_normal((N, 3))
    value = loss(pred, target)
    weight = _upstream(value.shape) if reduction == "none" else None
    analytic = loss.backward(weight)
    numeric = _finite_differences(loss, pred, target, weight)
    numpy.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_probabilities_of_a_softmax_equal_logits(device, dtype):
    logits, labels = _logits(dtype, scale=1.0), _labels()
    probs = numpy.exp(logits) / numpy.exp(logits).sum(axis=1, keepdims=True)
    v1, _ = _run(L.CrossEntropy(from_logits=False, label_smoothing=0.1), probs.astype(dtype),
                 labels, device)
    v2, _ = _run(L.CrossEntropy(label_smoothing=0.1), logits, labels, device)
    _close(v1, v2, dtype, "value")


def test_clip_epsilon_is_keras_default_and_configurable():
    assert L.KERAS_EPSILON == 1e-7 and L.CrossEntropy(from_logits=False).epsilon == 1e-7
    probs, labels = _probabilities(zero=True), numpy.array([1, 0, 3, 0, 0, 0, 0])
    dense = numpy.eye(K)[labels]
    for eps in (1e-7, 1e-3):
        value = L.CrossEntropy(from_logits=False, epsilon=eps, reduction="none")(probs, labels)
        numpy.testing.assert_allclose(value, keras_categorical_crossentropy(dense, probs, eps),
                                      rtol=1e-12)
    assert numpy.isclose(value[0], -numpy.log(1e-3))  # a zero probability: -log(epsilon)


def test_reduction_steps_do_not_sync(monkeypatch):
    from test_optim import no_host_sync

    logits = to_device(_logits("float32"), "fakecupy")
    labels = to_device(_labels(), "fakecupy")
    probs = to_device(_probabilities().astype("float32"), "fakecupy")
    with no_host_sync(monkeypatch):
        for loss, pred in ((L.CrossEntropy(label_smoothing=0.2, reduction="sum"), logits),
                           (L.CrossEntropy(from_logits=False, reduction="none"), probs),
                           (L.NLLLoss(reduction="sum"), logits), (L.Hinge(reduction="none"),
                                                                  logits)):
            loss(pred, labels)
            loss.backward()


def test_reduction_and_grad_validation():
    with pytest.raises(ValueError, match="reduction"):
        L.MSE(reduction="average")
    loss = L.SoftmaxCrossEntropy(reduction="none")
    loss(_logits("float64"), _labels())
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        loss.backward(numpy.ones(3))
    loss = L.MSE(reduction="mean")
    loss(numpy.zeros((2, 2)), numpy.ones((2, 2)))
    with pytest.raises(ValueError, match="scalar"):
        loss.backward(numpy.ones((2, 2)))
    numpy.testing.assert_allclose(loss.backward(2.0), numpy.full((2, 2), -1.0))
    with pytest.raises(TypeError, match="NLLLoss: labels must be integers"):
        L.NLLLoss()(_logits("float64"), numpy.zeros(N))
    with pytest.raises(ValueError, match="CrossEntropy: class labels"):
        L.CrossEntropy(from_logits=False)(_probabilities(), numpy.full(N, K))
    assert isinstance(L.get("nll_loss", reduction="sum"), L.NLLLoss)
    assert L.get("categorical_cross_entropy", from_logits=False).from_logits is False
    assert L.SoftmaxCrossEntropy(0.1).config() == {"label_smoothing": 0.1, "reduction": "mean"}
