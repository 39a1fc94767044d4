"""Finite-difference gradient checks (float64) of every layer: input and parameter gradients.

Every case in layer_checks.CASES (conv strides 1/2/3, padding 0/1/'same'/
'valid', dilation 1/2, non-square kernels and inputs, odd sizes, batch 1 and
>1, pooling, activations, dropout with a fixed mask, BatchNorm train and eval,
Residual with identity and conv shortcut, Sequential) is checked with central
differences; inputs must stay unmodified and non-contiguous inputs must give
the same results as contiguous ones.
"""
from __future__ import annotations

import numpy
import pytest

import gpuconv
from gpuconv.layers import BatchNorm2d, Conv2D, Dense, MaxPool2D, ReLU
from layer_checks import (CASE_IDS, CASES, assert_close, gradcheck, make_input, make_layer,
                          non_contiguous, run, tie_free)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradients_match_finite_differences(case):
    rng = numpy.random.default_rng(abs(hash(case.id)) % 2**32)
    layer = make_layer(case, "float64")
    x = make_input(case, rng)
    gradcheck(layer, x, reseed=case.reseed)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_non_contiguous_input_gives_same_results(case):
    rng = numpy.random.default_rng(1)
    layer = make_layer(case, "float64")
    x = make_input(case, rng)
    if case.reseed is not None:
        gpuconv.seed(case.reseed)
    dy = rng.standard_normal(layer.forward(x).shape)
    y1, dx1, g1 = run(layer, x, dy, case.reseed)
    xn = non_contiguous(x)
    dyn = non_contiguous(dy)
    y2, dx2, g2 = run(layer, xn, dyn, case.reseed)
    assert numpy.array_equal(xn, x), "input modified"
    assert_close(y2, y1, 1e-12, 1e-13, "forward on non-contiguous input")
    assert_close(dx2, dx1, 1e-12, 1e-13, "input gradient with non-contiguous dy")
    for name in g1:
        assert_close(g2[name], g1[name], 1e-12, 1e-13, f"gradient of {name}")


def test_gradients_accumulate_across_backward_calls():
    gpuconv.seed(0)
    layer = Conv2D(2, 3, 3, padding=1).astype("float64")
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((2, 2, 4, 4))
    dy = rng.standard_normal((2, 3, 4, 4))
    _, _, once = run(layer, x, dy)
    layer.zero_grad()
    layer.forward(x)
    layer.backward(dy)
    layer.forward(x)
    layer.backward(dy)
    for name, p in layer.named_parameters():
        assert_close(p.grad, 2 * once[name], 1e-12, 1e-12, name)
    layer.zero_grad()
    assert all(not p.grad.any() for p in layer.parameters())


def test_gradcheck_detects_a_wrong_gradient():
    """The checker itself must be able to fail: break Dense.backward and expect an error."""
    gpuconv.seed(0)
    layer = Dense(3, 2).astype("float64")
    original = layer.backward
    layer.backward = lambda dy: original(dy) * 1.001
    with pytest.raises(AssertionError, match="input gradient"):
        gradcheck(layer, numpy.random.default_rng(0).standard_normal((2, 3)))

    layer = Dense(3, 2).astype("float64")
    original = layer.backward

    def wrong_weight_grad(dy):
        dx = original(dy)
        layer.weight.grad[0, 0] += 1e-3
        return dx
    layer.backward = wrong_weight_grad
    with pytest.raises(AssertionError, match="parameter weight"):
        gradcheck(layer, numpy.random.default_rng(0).standard_normal((2, 3)))


def test_maxpool_routes_gradient_to_the_max_and_handles_all_negative_windows():
    x = -tie_free((1, 1, 4, 4), numpy.random.default_rng(0), 1.0, 5.0)  # all negative
    pool = MaxPool2D(3, 2, 1)
    y = pool.forward(x)
    # windows overlapping the padding must still pick a real (negative) pixel, never 0/-inf
    assert (y < 0).all() and numpy.isfinite(y).all()
    dx = pool.backward(numpy.ones_like(y))
    assert dx.sum() == y.size and set(numpy.unique(dx)) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    for (n, c, i, j), v in numpy.ndenumerate(y):
        assert v == x[n, c, max(0, 2 * i - 1):2 * i + 2, max(0, 2 * j - 1):2 * j + 2].max()


def test_maxpool_ties_go_to_the_first_maximum_like_torch():
    x = numpy.zeros((1, 1, 2, 2))  # after ReLU whole windows are 0
    pool = MaxPool2D(2)
    pool.forward(x)
    dx = pool.backward(numpy.ones((1, 1, 1, 1)))
    assert dx[0, 0, 0, 0] == 1.0 and dx.sum() == 1.0


def test_large_window_maxpool_uses_wide_index_type():
    """Windows over 255 elements need more than uint8 local indices."""
    rng = numpy.random.default_rng(0)
    x = tie_free((1, 2, 17, 17), rng)
    pool = MaxPool2D(17)
    y = pool.forward(x)
    dx = pool.backward(numpy.ones_like(y))
    for c in range(2):
        assert dx[0, c].reshape(-1).argmax() == x[0, c].reshape(-1).argmax()
        assert dx[0, c].sum() == 1.0


def test_relu_gradient_is_zero_for_negative_inputs():
    x = numpy.array([[-1.0, 2.0, -0.5, 0.25]])
    relu = ReLU()
    relu.forward(x)
    numpy.testing.assert_array_equal(relu.backward(numpy.ones_like(x)), [[0, 1, 0, 1]])


def test_batchnorm_eval_gradient_uses_running_stats_only():
    gpuconv.seed(0)
    bn = BatchNorm2d(2).astype("float64")
    bn.running_mean[...] = [0.5, -1.0]
    bn.running_var[...] = [4.0, 0.25]
    bn.eval()
    x = numpy.random.default_rng(0).standard_normal((2, 2, 2, 2))
    bn.forward(x)
    dx = bn.backward(numpy.ones_like(x))
    expected = numpy.broadcast_to((1 / numpy.sqrt(numpy.array([4.0, 0.25]) + bn.eps))
                                  .reshape(1, 2, 1, 1), x.shape)
    assert_close(dx, expected, 1e-12, 0, "eval BN input gradient")


# ---- GELU, Multiply and frozen parameters (airbench building blocks) ------------------------

from gpuconv.layers import GELU, Multiply  # noqa: E402
from layer_checks import numerical_gradient  # noqa: E402

AIRBENCH_CASES = [
    pytest.param(lambda: GELU(), (2, 3, 4, 5), 1.0, id="gelu"),
    pytest.param(lambda: GELU(), (3, 7), 4.0, id="gelu-wide-range"),
    pytest.param(lambda: GELU("tanh"), (2, 3, 4, 5), 1.0, id="gelu-tanh"),
    pytest.param(lambda: GELU("tanh"), (3, 7), 4.0, id="gelu-tanh-wide-range"),
    pytest.param(lambda: Multiply(1 / 9), (2, 3, 2, 2), 1.0, id="multiply-ninth"),
    pytest.param(lambda: Multiply(-2.5), (4, 5), 1.0, id="multiply-negative"),
]


@pytest.mark.parametrize("make,shape,scale", AIRBENCH_CASES)
def test_gelu_and_multiply_gradients_match_finite_differences(make, shape, scale):
    x = numpy.random.default_rng(21).standard_normal(shape) * scale
    gradcheck(make(), x)
    y1, dx1, _ = run(make(), x, numpy.ones(shape))
    y2, dx2, _ = run(make(), non_contiguous(x), non_contiguous(numpy.ones(shape)))
    assert_close(y2, y1, 1e-15, 0, "forward on non-contiguous input")
    assert_close(dx2, dx1, 1e-15, 0, "input gradient on non-contiguous input")


def _check_trainable_gradients(layer, x, frozen: set, reference) -> None:
    """dx and the non-frozen gradients equal an unfrozen twin's and central differences;
    frozen gradients stay exactly zero."""
    rng = numpy.random.default_rng(22)
    y = layer.forward(x)
    r = rng.standard_normal(y.shape)
    _, dx, grads = run(layer, x, r)
    _, dx_ref, grads_ref = run(reference, x, r)
    numpy.testing.assert_array_equal(dx, dx_ref)
    for name, g in grads.items():
        if name in frozen:
            assert not g.any(), f"frozen {name} got a gradient"
        else:
            numpy.testing.assert_allclose(g, grads_ref[name], rtol=1e-13, atol=1e-15,
                                          err_msg=name)

    def loss() -> float:
        return float((layer.forward(xx) * r).sum())

    xx = x.copy()
    num, ana = numerical_gradient(loss, xx, analytic=dx, rng=rng)
    assert_close(ana, num, 1e-5, 1e-7, "input gradient")
    for name, p in layer.named_parameters():
        if name not in frozen:
            xx = x.copy()
            num, ana = numerical_gradient(loss, p.data, analytic=grads[name], rng=rng)
            assert_close(ana, num, 1e-5, 1e-7, f"gradient of {name}")


def _bn_randomised(train: bool):
    bn = BatchNorm2d(3, eps=1e-12, momentum=0.4).astype("float64")
    rng = numpy.random.default_rng(23)
    bn.weight.data[...] = 0.5 + rng.random(3)
    bn.bias.data[...] = rng.standard_normal(3)
    bn.running_mean[...] = rng.standard_normal(3)
    bn.running_var[...] = 0.5 + rng.random(3)
    return bn.train(train)


FROZEN_CASES = [
    pytest.param(lambda: Conv2D(2, 3, 3, padding=1, bias_init="Normal"), (2, 2, 4, 5),
                 {"weight"}, id="conv-weight"),
    pytest.param(lambda: Conv2D(2, 3, 2, stride=2, bias_init="Normal"), (2, 2, 4, 5),
                 {"bias"}, id="conv-bias"),
    pytest.param(lambda: Conv2D(2, 3, 3, bias_init="Normal"), (2, 2, 4, 5),
                 {"weight", "bias"}, id="conv-both"),
    pytest.param(lambda: Dense(5, 3, bias_init="Normal"), (4, 5), {"weight"}, id="dense-weight"),
    pytest.param(lambda: Dense(5, 3, bias_init="Normal"), (4, 5), {"bias"}, id="dense-bias"),
    pytest.param(lambda: _bn_randomised(True), (3, 3, 2, 3), {"weight"}, id="bn-train-weight"),
    pytest.param(lambda: _bn_randomised(True), (3, 3, 2, 3), {"bias"}, id="bn-train-bias"),
    pytest.param(lambda: _bn_randomised(False), (3, 3, 2, 3), {"weight"}, id="bn-eval-weight"),
    pytest.param(lambda: _bn_randomised(False), (3, 3, 2, 3), {"weight", "bias"},
                 id="bn-eval-both"),
]


@pytest.mark.parametrize("make,shape,frozen", FROZEN_CASES)
def test_frozen_parameters_get_no_gradient_and_the_rest_is_unchanged(make, shape, frozen):
    gpuconv.seed(5)
    layer = make().astype("float64").freeze(*sorted(frozen))
    gpuconv.seed(5)
    reference = make().astype("float64")
    x = numpy.random.default_rng(24).standard_normal(shape)
    assert sorted(layer.frozen_names()) == sorted(frozen)
    _check_trainable_gradients(layer, x, frozen, reference)


def test_frozen_conv_skips_the_weight_gemm_and_a_fully_frozen_first_layer_does_nothing(
        monkeypatch):
    import gpuconv.layers.conv as conv_module

    calls = []
    original = conv_module.conv2d_backward

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(conv_module, "conv2d_backward", spy)
    rng = numpy.random.default_rng(25)
    x = rng.standard_normal((2, 3, 5, 5))
    gpuconv.seed(6)
    layer = Conv2D(3, 4, 2, bias_init="Normal").astype("float64").freeze("weight")
    gpuconv.seed(6)
    reference = Conv2D(3, 4, 2, bias_init="Normal").astype("float64")
    dy = rng.standard_normal(layer.forward(x).shape)
    layer.backward(dy)
    assert calls[-1]["need_weight_grad"] is False
    # first layer (backward_params), frozen whitening weight, trainable bias: only a bias sum
    calls.clear()
    layer.zero_grad()
    layer.forward(x)
    layer.backward_params(dy)
    assert calls == []
    reference.forward(x)
    reference.backward_params(dy)
    numpy.testing.assert_allclose(layer.bias.grad, reference.bias.grad, rtol=1e-13)
    assert not layer.weight.grad.any()
    calls.clear()
    layer.freeze()
    layer.forward(x)
    assert layer.backward_params(dy) is None and not layer.bias.grad.any()
    assert calls == []
    layer.unfreeze("weight")
    layer.forward(x)
    layer.backward(dy)
    assert calls[-1]["need_weight_grad"] is True and calls[-1]["need_input_grad"] is True
    assert layer.weight.grad.any() and not layer.bias.grad.any()
