"""Shared test helpers: input makers, finite-difference gradient checks, the layer catalogue.

``CASES`` lists one small configuration per interesting layer setting; the
gradient checks (test_gradcheck.py) and the cross-device checks
(test_fake_cupy_backend.py) both run over it, so adding a layer here tests it
everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy

import gpuconv
from gpuconv.containers import Sequential
from gpuconv.layers import (AvgPool2D, BatchNorm1d, BatchNorm2d, Conv1D, Conv2D, Dense, Dropout,
                            Dropout2d, Flatten, GlobalAvgPool2D, LeakyReLU, MaxPool2D, ReLU,
                            Residual, Sigmoid, Softmax, Tanh)


# ---- inputs ------------------------------------------------------------------------

def away_from_zero(shape, rng, low: float = 0.05) -> numpy.ndarray:
    """Random values with |x| >= low (kinks of ReLU-like layers stay out of reach)."""
    magnitude = low + rng.random(shape)
    return numpy.where(rng.random(shape) < 0.5, -magnitude, magnitude)


def tie_free(shape, rng, low: float = -2.0, high: float = 2.0) -> numpy.ndarray:
    """A shuffled linspace: all values distinct and at least (high-low)/size apart."""
    size = int(numpy.prod(shape))
    return rng.permutation(numpy.linspace(low, high, size)).reshape(shape)


def non_contiguous(x: numpy.ndarray) -> numpy.ndarray:
    """The same values as ``x`` in a non-contiguous array.

    A strided view (every other element of a bigger array) along the longest
    axis; for 2+ axes additionally with the axes' memory order reversed.
    """
    if x.size <= 1 or max(x.shape) == 1:
        return x.copy()  # every layout of a single element is contiguous
    axis = int(numpy.argmax(x.shape))
    big_shape = list(x.shape)
    big_shape[axis] *= 2
    order = "F" if x.ndim >= 2 else "C"
    big = numpy.full(big_shape, numpy.nan, dtype=x.dtype, order=order)
    index = [slice(None)] * x.ndim
    index[axis] = slice(None, None, 2)
    big[tuple(index)] = x
    view = big[tuple(index)]
    assert not view.flags.c_contiguous and numpy.array_equal(view, x)
    return view


# ---- the catalogue ---------------------------------------------------------------------

@dataclass
class Case:
    id: str
    make: Callable[[], gpuconv.layers.Layer]
    shape: tuple
    inputs: str = "away"          # "away" | "tie_free" | "normal"
    reseed: int | None = None     # reseed before every forward (dropout masks)
    train: bool = True
    prepare: Callable | None = None  # called on the layer once (e.g. BN running stats)
    tags: tuple = field(default_factory=tuple)


def _bn_stats(layer) -> None:
    """Non-trivial running statistics (so eval-mode checks test something)."""
    rng = numpy.random.default_rng(7)
    layer.running_mean[...] = rng.standard_normal(layer.num_features).astype(layer.running_mean.dtype)
    layer.running_var[...] = (0.5 + rng.random(layer.num_features)).astype(layer.running_var.dtype)


def _bn_affine(layer) -> None:
    rng = numpy.random.default_rng(8)
    layer.weight.data[...] = (0.5 + rng.random(layer.num_features)).astype(layer.weight.data.dtype)
    layer.bias.data[...] = rng.standard_normal(layer.num_features).astype(layer.bias.data.dtype)


def _bn_both(layer) -> None:
    _bn_stats(layer)
    _bn_affine(layer)


def _randomize_bias(layer) -> None:
    for p in layer.parameters():
        if p.name == "bias":
            p.data[...] = numpy.random.default_rng(9).standard_normal(p.shape).astype(p.data.dtype)


def _conv(*args, **kwargs):
    return lambda: Conv2D(*args, **kwargs)


CONV2D_CASES = [
    # (in, out, kernel, stride, padding, dilation, bias, (H, W), N)
    (2, 3, 3, 1, 0, 1, True, (5, 6), 1),
    (2, 3, (2, 3), 2, 1, 1, True, (7, 5), 2),
    (3, 2, (3, 2), 3, "same", 1, True, (8, 7), 2),
    (1, 2, 3, 1, "same", 2, False, (6, 7), 3),
    (2, 2, (3, 1), (2, 1), "valid", (2, 1), True, (9, 4), 2),
    (2, 3, 1, 1, 0, 1, True, (3, 3), 2),
    (2, 2, 3, 2, "same", 1, True, (5, 5), 1),
    (2, 2, 2, (1, 3), (1, 0), (1, 2), True, (4, 9), 2),
    (2, 2, (4, 5), 1, 0, 1, True, (4, 5), 2),
    (1, 2, 3, 3, 1, 2, True, (7, 8), 2),
    (2, 2, (1, 3), 1, "same", 1, True, (3, 6), 2),
]

CONV1D_CASES = [
    # (in, out, kernel, stride, padding, dilation, bias, L, N)
    (2, 3, 3, 1, 0, 1, True, 7, 2),
    (1, 2, 4, 2, 1, 1, True, 9, 1),
    (3, 2, 3, 3, "same", 2, False, 10, 2),
    (2, 2, 2, 1, "same", 1, True, 6, 3),
    (2, 1, 5, 1, "valid", 1, True, 5, 2),
]

POOL_CASES = [
    # (kernel, stride, padding, (H, W), N)
    (2, None, 0, (4, 6), 2),          # tiling fast path
    (2, None, 0, (5, 7), 1),          # odd sizes: last row/col dropped
    (3, 2, 1, (7, 6), 2),
    ((3, 2), (1, 2), (1, 1), (5, 6), 2),
    ((2, 3), 1, 0, (3, 5), 2),
    (3, 3, 0, (9, 9), 1),
]


def _conv_id(c) -> str:
    return "conv2d-k{2}-s{3}-p{4}-d{5}-b{6}-{7}-n{8}".format(*c).replace(" ", "")


def build_cases() -> list[Case]:
    cases: list[Case] = []
    for c in CONV2D_CASES:
        cin, cout, k, s, p, d, b, hw, n = c
        cases.append(Case(_conv_id(c), _conv(cin, cout, k, stride=s, padding=p, dilation=d,
                                               bias=b, bias_init="Normal"),
                          (n, cin) + hw, "normal"))
    for c in CONV1D_CASES:
        cin, cout, k, s, p, d, b, length, n = c
        cases.append(Case(f"conv1d-k{k}-s{s}-p{p}-d{d}-b{b}-l{length}-n{n}",
                          (lambda cin=cin, cout=cout, k=k, s=s, p=p, d=d, b=b:
                           Conv1D(cin, cout, k, stride=s, padding=p, dilation=d, bias=b,
                                  bias_init="Normal")),
                          (n, cin, length), "normal"))
    for c in POOL_CASES:
        k, s, p, hw, n = c
        tag = f"k{k}-s{s}-p{p}-{hw}-n{n}".replace(" ", "")
        cases.append(Case(f"maxpool-{tag}", lambda k=k, s=s, p=p: MaxPool2D(k, s, p),
                          (n, 2) + hw, "tie_free"))
        cases.append(Case(f"avgpool-{tag}", lambda k=k, s=s, p=p: AvgPool2D(k, s, p),
                          (n, 2) + hw, "normal"))
    cases += [
        Case("maxpool-all-negative-padded", lambda: MaxPool2D(3, 2, 1), (2, 2, 5, 5), "tie_free"),
        Case("globalavgpool", GlobalAvgPool2D, (2, 3, 3, 5), "normal"),
        Case("globalavgpool-n1", GlobalAvgPool2D, (1, 2, 1, 1), "normal"),
        Case("dense", lambda: Dense(5, 3, bias_init="Normal"), (4, 5), "normal"),
        Case("dense-n1-nobias", lambda: Dense(4, 2, bias=False), (1, 4), "normal"),
        Case("relu", ReLU, (2, 3, 4, 3), "away"),
        Case("relu-2d", ReLU, (3, 5), "away"),
        Case("leakyrelu", lambda: LeakyReLU(0.1), (2, 3, 4), "away"),
        Case("sigmoid", Sigmoid, (3, 7), "normal"),
        Case("sigmoid-large", Sigmoid, (2, 5), "large"),
        Case("tanh", Tanh, (2, 2, 3, 3), "normal"),
        Case("softmax-last", Softmax, (3, 5), "normal"),
        Case("softmax-axis0", lambda: Softmax(axis=0), (4, 3), "normal"),
        Case("softmax-axis1-4d", lambda: Softmax(axis=1), (2, 3, 2, 2), "normal"),
        Case("softmax-axis-2", lambda: Softmax(axis=-2), (2, 4, 3), "normal"),
        Case("softmax-large", Softmax, (2, 4), "large"),
        Case("flatten", Flatten, (2, 3, 2, 2), "normal"),
        Case("dropout", lambda: Dropout(0.3), (4, 5), "normal", reseed=11),
        Case("dropout-eval", lambda: Dropout(0.3), (4, 5), "normal", train=False),
        Case("dropout-p0", lambda: Dropout(0.0), (3, 4), "normal"),
        Case("dropout2d", lambda: Dropout2d(0.5), (3, 4, 2, 3), "normal", reseed=12),
        Case("batchnorm1d-train", lambda: BatchNorm1d(4), (5, 4), "normal", prepare=_bn_both),
        Case("batchnorm1d-eval", lambda: BatchNorm1d(3), (4, 3), "normal", train=False,
             prepare=_bn_both),
        Case("batchnorm2d-train", lambda: BatchNorm2d(3), (2, 3, 3, 4), "normal", prepare=_bn_both),
        Case("batchnorm2d-train-n1", lambda: BatchNorm2d(2), (1, 2, 3, 3), "normal",
             prepare=_bn_both),
        Case("batchnorm2d-eval", lambda: BatchNorm2d(2), (2, 2, 3, 3), "normal", train=False,
             prepare=_bn_both),
        Case("residual-identity",
             lambda: Residual([Conv2D(2, 2, 3, padding=1), BatchNorm2d(2), ReLU()]),
             (2, 2, 4, 5), "normal"),
        Case("residual-conv-shortcut",
             lambda: Residual([Conv2D(2, 3, 3, stride=2, padding=1), BatchNorm2d(3), Tanh()],
                              [Conv2D(2, 3, 1, stride=2), BatchNorm2d(3)]),
             (2, 2, 5, 4), "normal"),
        Case("sequential-cnn",
             lambda: Sequential([Conv2D(2, 3, 3, padding="same"), BatchNorm2d(3), Tanh(),
                                 AvgPool2D(2), Conv2D(3, 4, (2, 3), stride=(1, 2)), Sigmoid(),
                                 Flatten(), Dense(4 * 1 * 1, 3), Softmax()]),
             (3, 2, 4, 6), "normal"),
        Case("sequential-mlp",
             lambda: Sequential([Dense(6, 5), BatchNorm1d(5), LeakyReLU(0.2), Dropout(0.25),
                                 Dense(5, 2)]),
             (4, 6), "normal", reseed=13),
    ]
    return cases


CASES = build_cases()
CASE_IDS = [c.id for c in CASES]


def make_input(case: Case, rng, dtype=numpy.float64) -> numpy.ndarray:
    if case.inputs == "tie_free":
        x = tie_free(case.shape, rng)
    elif case.inputs == "away":
        x = away_from_zero(case.shape, rng)
    elif case.inputs == "large":
        x = rng.standard_normal(case.shape) * 30.0
    else:
        x = rng.standard_normal(case.shape)
    return x.astype(dtype)


def make_layer(case: Case, dtype="float64", seed: int = 0):
    gpuconv.seed(seed)
    layer = case.make().astype(dtype)
    for sub in _walk(layer):
        if isinstance(sub, (BatchNorm1d, BatchNorm2d)) and case.prepare is not None:
            case.prepare(sub)
        if isinstance(sub, (Conv2D, Conv1D, Dense)):
            _randomize_bias(sub)
    layer.train(case.train)
    return layer


def _walk(layer):
    yield layer
    for child in layer.children():
        yield from _walk(child)


def seed_cnn(dtype="float32") -> Sequential:
    """The project's seed CNN for CIFAR-10 shaped (3, 32, 32) inputs."""
    return Sequential([
        Conv2D(3, 32, 3, padding="same", dtype=dtype), BatchNorm2d(32, dtype=dtype), ReLU(),
        MaxPool2D(2),
        Conv2D(32, 64, 3, padding="same", dtype=dtype), BatchNorm2d(64, dtype=dtype), ReLU(),
        MaxPool2D(2),
        Conv2D(64, 128, 3, padding="same", dtype=dtype), BatchNorm2d(128, dtype=dtype), ReLU(),
        MaxPool2D(2),
        Flatten(), Dense(2048, 10, dtype=dtype)])


# ---- gradient checks --------------------------------------------------------------------

def run(layer, x, dy, reseed: int | None = None):
    """forward + backward from zeroed grads; returns (y, dx, {param name: grad})."""
    layer.zero_grad()
    if reseed is not None:
        gpuconv.seed(reseed)
    y = layer.forward(x)
    dx = layer.backward(dy)
    grads = {name: p.grad.copy() for name, p in layer.named_parameters()}
    return y, dx, grads


def numerical_gradient(f: Callable[[], float], a: numpy.ndarray, eps: float = 1e-6,
                       max_elements: int = 400, directions: int = 6,
                       analytic: numpy.ndarray | None = None, rng=None):
    """Central differences of scalar ``f`` with respect to ``a`` (modified in place, restored).

    Per element when ``a.size <= max_elements``; otherwise along random unit
    ``directions`` and returns pairs (numeric, analytic projected) instead.
    """
    if a.size <= max_elements:
        grad = numpy.zeros(a.shape)
        for idx in numpy.ndindex(a.shape):
            old = a[idx]
            a[idx] = old + eps
            plus = f()
            a[idx] = old - eps
            minus = f()
            a[idx] = old
            grad[idx] = (plus - minus) / (2 * eps)
        return grad, analytic
    rng = rng or numpy.random.default_rng(0)
    numeric, projected = [], []
    original = a.copy()
    for _ in range(directions):
        d = rng.standard_normal(a.shape)
        d /= numpy.linalg.norm(d)
        a[...] = original + eps * d
        plus = f()
        a[...] = original - eps * d
        minus = f()
        a[...] = original
        numeric.append((plus - minus) / (2 * eps))
        projected.append(float((analytic * d).sum()))
    return numpy.array(numeric), numpy.array(projected)


def assert_close(actual, expected, rtol, atol, what):
    actual, expected = numpy.asarray(actual), numpy.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = numpy.abs(actual - expected)
    bound = atol + rtol * numpy.abs(expected)
    if not (err <= bound).all():
        worst = numpy.unravel_index(numpy.argmax(err - bound), err.shape)
        raise AssertionError(f"{what}: max abs error {err.max():.3g} at {worst} "
                             f"(got {actual[worst]!r}, expected {expected[worst]!r})")


def gradcheck(layer, x: numpy.ndarray, reseed: int | None = None, eps: float = 1e-6,
              rtol: float = 1e-5, atol: float = 1e-7, seed: int = 0) -> None:
    """Analytic input and parameter gradients of ``sum(layer(x) * r)`` vs central differences."""
    rng = numpy.random.default_rng(seed)
    y0 = layer.forward(x.copy()) if reseed is None else None
    if reseed is not None:
        gpuconv.seed(reseed)
        y0 = layer.forward(x.copy())
    r = rng.standard_normal(y0.shape)
    x_before, r_before = x.copy(), r.copy()
    y, dx, grads = run(layer, x, r, reseed)
    assert numpy.array_equal(x, x_before), "forward/backward modified its input x"
    assert numpy.array_equal(r, r_before), "backward modified its input dy"
    assert dx.shape == x.shape and dx.dtype == x.dtype
    assert y.dtype == x.dtype

    def loss() -> float:
        if reseed is not None:
            gpuconv.seed(reseed)
        return float((layer.forward(xx) * r).sum())

    xx = x.copy()
    num, ana = numerical_gradient(loss, xx, eps, analytic=dx, rng=rng)
    assert_close(ana, num, rtol, atol, "input gradient")
    params = dict(layer.named_parameters())
    for name, p in params.items():
        xx = x.copy()
        num, ana = numerical_gradient(loss, p.data, eps, analytic=grads[name], rng=rng)
        assert_close(ana, num, rtol, atol, f"gradient of parameter {name}")
