"""PyTorch (CPU) as the oracle: forward outputs and every gradient equal torch.nn's.

Randomised but seeded configurations per layer (see ``_configs``), each in
float32 (rtol 1e-5) and float64 (rtol 1e-10). Tolerances are relative to the
largest magnitude of the compared tensor (an elementwise rtol alone is
meaningless for values that cancel to ~0). Mapping notes:

- Dense.weight is Linear.weight.T;
- 'same' padding with stride > 1 is TensorFlow-style (odd pixel after): torch
  gets the same padding via an explicit F.pad;
- AvgPool2D counts padding in the divisor (torch's count_include_pad=True).

torch is a declared test dependency (pyproject [test]): imported plainly so
that a missing torch fails loudly instead of skipping.
"""
from __future__ import annotations

import numpy
import pytest
import torch
import torch.nn.functional as F

import gpuconv
from gpuconv.containers import Sequential
from gpuconv.layers import (AvgPool2D, BatchNorm1d, BatchNorm2d, Conv1D, Conv2D, Dense, Dropout,
                            Dropout2d, Flatten, GlobalAvgPool2D, LeakyReLU, MaxPool2D, ReLU,
                            Residual, Sigmoid, Softmax, Tanh)
from layer_checks import seed_cnn, tie_free

RTOL = {numpy.float32: 1e-5, numpy.float64: 1e-10}
DTYPES = [pytest.param(numpy.float32, id="f32"), pytest.param(numpy.float64, id="f64")]
TORCH_DTYPE = {numpy.float32: torch.float32, numpy.float64: torch.float64}
N_CONFIGS = 30


@pytest.fixture(autouse=True, scope="module")
def _torch_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic summation order, no oversubscription
    yield
    torch.set_num_threads(old)


def close(ours, theirs, dtype, what, scale_rtol: float = 1.0, scale: float | None = None):
    """``ours`` == ``theirs`` within rtol, relative to the larger of |theirs| and max|theirs|.

    ``scale`` overrides max|theirs| for tensors that are zero in exact
    arithmetic (a conv bias feeding BatchNorm has gradient 0 + rounding noise).
    """
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else numpy.asarray(theirs)
    ours = numpy.asarray(ours)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != torch {theirs.shape}"
    assert ours.dtype == dtype, f"{what}: dtype {ours.dtype} != {numpy.dtype(dtype)}"
    rtol = RTOL[dtype] * scale_rtol
    if scale is None:
        scale = float(numpy.abs(theirs).max()) if theirs.size else 0.0
    numpy.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * scale, err_msg=what)


def tt(a: numpy.ndarray, grad: bool = False) -> torch.Tensor:
    t = torch.from_numpy(numpy.array(a, copy=True))
    return t.requires_grad_(grad)


def _configs(name: str, make, n: int = N_CONFIGS) -> list:
    rng = numpy.random.default_rng(sum(map(ord, name)))  # stable across runs (no hash())
    return [pytest.param(make(rng, i), id=f"{name}{i}") for i in range(n)]


# ---- convolution ---------------------------------------------------------------------

def _pick(rng, values, probs, n: int = 2) -> tuple:
    return tuple(int(v) for v in rng.choice(values, n, p=probs))


def _conv2d_config(rng, i: int) -> dict:
    k = tuple(int(v) for v in rng.integers(1, 6, 2))
    s = _pick(rng, [1, 2, 3], [0.5, 0.3, 0.2]) if i % 3 else (1, 1)
    d = _pick(rng, [1, 2], [0.7, 0.3]) if i % 4 else (1, 1)
    kind = ["same", "int", "tuple", "same", "valid"][(i // 2) % 5]
    padding = {"int": int(rng.integers(0, 3)), "tuple": tuple(int(v) for v in rng.integers(0, 3, 2)),
               "same": "same", "valid": "valid"}[kind]
    extent = [d[a] * (k[a] - 1) + 1 for a in (0, 1)]
    hw = tuple(int(extent[a] + rng.integers(0, 8)) for a in (0, 1))
    return dict(n=int(rng.integers(1, 5)), cin=int(rng.integers(1, 5)), cout=int(rng.integers(1, 7)),
                k=k, s=s, d=d, padding=padding, hw=hw, bias=bool(rng.random() < 0.8))


def same_padding(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' (written independently of gpuconv): ceil(size/s) outputs,
    total padding split with the odd pixel at the end (bottom/right)."""
    out = (size + s - 1) // s
    needed = (out - 1) * s + (k - 1) * d + 1
    total = max(0, needed - size)
    return total // 2, total - total // 2


def _torch_pad(padding, hw, k, s, d):
    """(F.pad tuple, conv padding) reproducing our padding spec in torch."""
    if padding == "valid":
        return None, 0
    if padding == "same":
        (t, b), (l, r) = (same_padding(hw[a], k[a], s[a], d[a]) for a in (0, 1))
        return (l, r, t, b), 0
    return None, padding


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", _configs("conv2d", _conv2d_config))
def test_conv2d(cfg, dtype):
    rng = numpy.random.default_rng(0)
    layer = Conv2D(cfg["cin"], cfg["cout"], cfg["k"], stride=cfg["s"], padding=cfg["padding"],
                   dilation=cfg["d"], bias=cfg["bias"], dtype=dtype)
    if cfg["bias"]:
        layer.bias.data[...] = rng.standard_normal(cfg["cout"])
    x = rng.standard_normal((cfg["n"], cfg["cin"]) + cfg["hw"]).astype(dtype)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)

    xt, wt = tt(x, True), tt(layer.weight.data, True)
    bt = tt(layer.bias.data, True) if cfg["bias"] else None
    pad, conv_pad = _torch_pad(cfg["padding"], cfg["hw"], cfg["k"], cfg["s"], cfg["d"])
    xin = F.pad(xt, pad) if pad else xt
    yt = F.conv2d(xin, wt, bt, stride=cfg["s"], padding=conv_pad, dilation=cfg["d"])
    yt.backward(tt(dy))
    close(y, yt, dtype, "forward")
    close(dx, xt.grad, dtype, "input gradient")
    close(layer.weight.grad, wt.grad, dtype, "weight gradient")
    if cfg["bias"]:
        close(layer.bias.grad, bt.grad, dtype, "bias gradient")
    if cfg["padding"] == "same":
        assert y.shape[2:] == tuple(-(-h // s) for h, s in zip(cfg["hw"], cfg["s"]))


def _conv1d_config(rng, i: int) -> dict:
    k, s, d = int(rng.integers(1, 6)), _pick(rng, [1, 2, 3], [0.5, 0.3, 0.2], 1)[0], \
        _pick(rng, [1, 2], [0.7, 0.3], 1)[0]
    padding = rng.choice(["int", "same", "valid"])
    padding = int(rng.integers(0, 3)) if padding == "int" else str(padding)
    return dict(n=int(rng.integers(1, 5)), cin=int(rng.integers(1, 5)), cout=int(rng.integers(1, 6)),
                k=k, s=s, d=d, padding=padding, length=int(d * (k - 1) + 1 + rng.integers(0, 10)),
                bias=bool(rng.random() < 0.8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", _configs("conv1d", _conv1d_config, 20))
def test_conv1d(cfg, dtype):
    rng = numpy.random.default_rng(1)
    layer = Conv1D(cfg["cin"], cfg["cout"], cfg["k"], stride=cfg["s"], padding=cfg["padding"],
                   dilation=cfg["d"], bias=cfg["bias"], dtype=dtype)
    if cfg["bias"]:
        layer.bias.data[...] = rng.standard_normal(cfg["cout"])
    x = rng.standard_normal((cfg["n"], cfg["cin"], cfg["length"])).astype(dtype)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)

    xt, wt = tt(x, True), tt(layer.weight.data, True)
    bt = tt(layer.bias.data, True) if cfg["bias"] else None
    if cfg["padding"] == "same":
        xin, pad = F.pad(xt, same_padding(cfg["length"], cfg["k"], cfg["s"], cfg["d"])), 0
    else:
        xin, pad = xt, 0 if cfg["padding"] == "valid" else cfg["padding"]
    yt = F.conv1d(xin, wt, bt, stride=cfg["s"], padding=pad, dilation=cfg["d"])
    yt.backward(tt(dy))
    close(y, yt, dtype, "forward")
    close(dx, xt.grad, dtype, "input gradient")
    close(layer.weight.grad, wt.grad, dtype, "weight gradient")
    if cfg["bias"]:
        close(layer.bias.grad, bt.grad, dtype, "bias gradient")


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_same_padding_stride_1_equals_torch_same():
    """For stride 1, our 'same' is exactly torch's padding='same' (no explicit pad)."""
    rng = numpy.random.default_rng(2)
    for k, d, hw in [((3, 4), (1, 1), (6, 7)), ((5, 2), (2, 3), (9, 8)), ((1, 2), (1, 1), (3, 3))]:
        layer = Conv2D(2, 3, k, padding="same", dilation=d, dtype="float64")
        x = rng.standard_normal((2, 2) + hw)
        yt = F.conv2d(tt(x), tt(layer.weight.data), tt(layer.bias.data), padding="same", dilation=d)
        close(layer.forward(x), yt, numpy.float64, f"same k={k} d={d}")


# ---- dense ----------------------------------------------------------------------------

def _dense_config(rng, i: int) -> dict:
    return dict(n=int(rng.integers(1, 9)), fin=int(rng.integers(1, 40)),
                fout=int(rng.integers(1, 20)), bias=bool(rng.random() < 0.8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", _configs("dense", _dense_config, 20))
def test_dense(cfg, dtype):
    rng = numpy.random.default_rng(3)
    layer = Dense(cfg["fin"], cfg["fout"], bias=cfg["bias"], dtype=dtype)
    lin = torch.nn.Linear(cfg["fin"], cfg["fout"], bias=cfg["bias"], dtype=TORCH_DTYPE[dtype])
    with torch.no_grad():
        lin.weight.copy_(tt(layer.weight.data.T))  # ours (in, out) = torch's weight.T
        if cfg["bias"]:
            layer.bias.data[...] = rng.standard_normal(cfg["fout"])
            lin.bias.copy_(tt(layer.bias.data))
    x = rng.standard_normal((cfg["n"], cfg["fin"])).astype(dtype)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    xt = tt(x, True)
    yt = lin(xt)
    yt.backward(tt(dy))
    close(y, yt, dtype, "forward")
    close(dx, xt.grad, dtype, "input gradient")
    close(layer.weight.grad, lin.weight.grad.T, dtype, "weight gradient")
    if cfg["bias"]:
        close(layer.bias.grad, lin.bias.grad, dtype, "bias gradient")


# ---- pooling --------------------------------------------------------------------------

def _pool_config(rng, i: int) -> dict:
    k = tuple(int(v) for v in rng.integers(1, 5, 2))
    s = None if rng.random() < 0.3 else tuple(int(v) for v in rng.integers(1, 4, 2))
    p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
    hw = tuple(int(k[a] + rng.integers(0, 7)) for a in (0, 1))
    return dict(n=int(rng.integers(1, 4)), c=int(rng.integers(1, 4)), k=k, s=s, p=p, hw=hw)


def _pool_run(layer, x, dy_rng):
    y = layer.forward(x)
    dy = dy_rng.standard_normal(y.shape).astype(x.dtype)
    return y, dy, layer.backward(dy)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", _configs("maxpool", _pool_config))
def test_maxpool2d(cfg, dtype):
    rng = numpy.random.default_rng(4)
    x = tie_free((cfg["n"], cfg["c"]) + cfg["hw"], rng).astype(dtype)
    x -= 3.0 if rng.random() < 0.5 else 0.0  # some configs all-negative (padding must be -inf)
    y, dy, dx = _pool_run(MaxPool2D(cfg["k"], cfg["s"], cfg["p"]), x, rng)
    xt = tt(x, True)
    yt = F.max_pool2d(xt, cfg["k"], cfg["s"] or cfg["k"], cfg["p"])
    yt.backward(tt(dy))
    close(y, yt, dtype, "forward")
    close(dx, xt.grad, dtype, "input gradient")


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool2d_ties_match_torch(dtype):
    """Tied maxima (zeros after ReLU, repeated values) route like torch: first maximum wins."""
    rng = numpy.random.default_rng(5)
    for k, s, p in [(2, 2, 0), (3, 2, 1), ((2, 3), 1, 0), (3, 3, 1)]:
        x = numpy.maximum(rng.integers(-2, 3, (2, 3, 7, 8)), 0).astype(dtype)
        y, dy, dx = _pool_run(MaxPool2D(k, s, p), x, rng)
        xt = tt(x, True)
        yt = F.max_pool2d(xt, k, s, p)
        yt.backward(tt(dy))
        close(y, yt, dtype, f"forward k={k}")
        close(dx, xt.grad, dtype, f"input gradient k={k} s={s} p={p}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", _configs("avgpool", _pool_config))
def test_avgpool2d(cfg, dtype):
    rng = numpy.random.default_rng(6)
    x = rng.standard_normal((cfg["n"], cfg["c"]) + cfg["hw"]).astype(dtype)
    y, dy, dx = _pool_run(AvgPool2D(cfg["k"], cfg["s"], cfg["p"]), x, rng)
    xt = tt(x, True)
    yt = F.avg_pool2d(xt, cfg["k"], cfg["s"] or cfg["k"], cfg["p"], count_include_pad=True)
    yt.backward(tt(dy))
    close(y, yt, dtype, "forward")
    close(dx, xt.grad, dtype, "input gradient")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 4, 5), (3, 2, 7, 1), (4, 8, 3, 3)])
def test_global_avgpool2d(shape, dtype):
    rng = numpy.random.default_rng(7)
    x = rng.standard_normal(shape).astype(dtype)
    y, dy, dx = _pool_run(GlobalAvgPool2D(), x, rng)
    xt = tt(x, True)
    yt = F.adaptive_avg_pool2d(xt, 1).flatten(1)
    yt.backward(tt(dy))
    close(y, yt, dtype, "forward")
    close(dx, xt.grad, dtype, "input gradient")


# ---- activations ------------------------------------------------------------------------

def _act_config(rng, i: int) -> dict:
    ndim = int(rng.integers(1, 5))
    shape = tuple(int(v) for v in rng.integers(1, 6, ndim))
    kind = ["relu", "leaky", "sigmoid", "tanh", "softmax"][i % 5]
    return dict(kind=kind, shape=shape, axis=int(rng.integers(-ndim, ndim)),
                slope=float(rng.choice([0.01, 0.1, 0.3])), scale=float(rng.choice([1.0, 5.0, 40.0])))


def _activation(cfg):
    kind = cfg["kind"]
    if kind == "relu":
        return ReLU(), F.relu
    if kind == "leaky":
        return LeakyReLU(cfg["slope"]), lambda t: F.leaky_relu(t, cfg["slope"])
    if kind == "sigmoid":
        return Sigmoid(), torch.sigmoid
    if kind == "tanh":
        return Tanh(), torch.tanh
    return Softmax(cfg["axis"]), lambda t: F.softmax(t, dim=cfg["axis"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", _configs("activation", _act_config, 100))  # 20 per kind
def test_activation(cfg, dtype):
    rng = numpy.random.default_rng(8)
    layer, fn = _activation(cfg)
    x = (rng.standard_normal(cfg["shape"]) * cfg["scale"]).astype(dtype)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    xt = tt(x, True)
    yt = fn(xt)
    yt.backward(tt(dy))
    close(y, yt, dtype, f"{cfg['kind']} forward")
    close(dx, xt.grad, dtype, f"{cfg['kind']} input gradient")


def test_softmax_extreme_logits_are_finite():
    x = numpy.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]], dtype=numpy.float32)
    y = Softmax().forward(x)
    assert numpy.isfinite(y).all()
    close(y, F.softmax(tt(x), dim=-1), numpy.float32, "softmax extreme")
    s = Sigmoid().forward(numpy.array([-1000.0, 1000.0], dtype=numpy.float32))
    numpy.testing.assert_array_equal(s, [0.0, 1.0])


# ---- batch norm -----------------------------------------------------------------------------

def _bn_config(rng, i: int) -> dict:
    two_d = bool(rng.random() < 0.6)
    n, c = int(rng.integers(1 if two_d else 2, 6)), int(rng.integers(1, 6))
    shape = (n, c) + ((int(rng.integers(1, 5)), int(rng.integers(2, 5))) if two_d else ())
    return dict(shape=shape, momentum=float(rng.choice([0.1, 0.01, 0.5, 1.0, 0.0])),
                eps=float(rng.choice([1e-5, 1e-3, 0.1])), steps=int(rng.integers(2, 5)),
                shift=float(rng.choice([0.0, 3.0, -20.0])))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", _configs("batchnorm", _bn_config))
def test_batchnorm(cfg, dtype):
    rng = numpy.random.default_rng(9)
    c = cfg["shape"][1]
    two_d = len(cfg["shape"]) == 4
    ours = (BatchNorm2d if two_d else BatchNorm1d)(c, eps=cfg["eps"], momentum=cfg["momentum"],
                                                   dtype=dtype)
    theirs = (torch.nn.BatchNorm2d if two_d else torch.nn.BatchNorm1d)(
        c, eps=cfg["eps"], momentum=cfg["momentum"], dtype=TORCH_DTYPE[dtype])
    gamma, beta = 0.5 + rng.random(c), rng.standard_normal(c)
    ours.weight.data[...] = gamma
    ours.bias.data[...] = beta
    with torch.no_grad():
        theirs.weight.copy_(tt(gamma.astype(dtype)))
        theirs.bias.copy_(tt(beta.astype(dtype)))
    for mode in ["train"] * cfg["steps"] + ["eval", "eval"]:
        ours.train(mode == "train")
        theirs.train(mode == "train")
        ours.zero_grad()
        theirs.zero_grad()
        # per-channel offsets make the running statistics non-trivial
        x = (rng.standard_normal(cfg["shape"]) * 2 + cfg["shift"]
             + rng.standard_normal((1, c) + (1,) * (len(cfg["shape"]) - 2))).astype(dtype)
        y = ours.forward(x)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = ours.backward(dy)
        xt = tt(x, True)
        yt = theirs(xt)
        yt.backward(tt(dy))
        close(y, yt, dtype, f"{mode} forward")
        close(dx, xt.grad, dtype, f"{mode} input gradient")
        close(ours.weight.grad, theirs.weight.grad, dtype, f"{mode} weight gradient")
        close(ours.bias.grad, theirs.bias.grad, dtype, f"{mode} bias gradient")
        close(ours.running_mean, theirs.running_mean, dtype, f"{mode} running_mean")
        close(ours.running_var, theirs.running_var, dtype, f"{mode} running_var")


def test_batchnorm_running_stats_after_many_steps():
    """Long-run agreement of running statistics (unbiased variance, momentum rule)."""
    rng = numpy.random.default_rng(10)
    ours = BatchNorm2d(4, momentum=0.1, dtype="float64")
    theirs = torch.nn.BatchNorm2d(4, momentum=0.1, dtype=torch.float64)
    for _ in range(25):
        x = rng.standard_normal((3, 4, 2, 3)) * [[[[1.0]], [[2.0]], [[0.5]], [[4.0]]]] + 1.5
        ours.forward(x)
        theirs(tt(x))
    close(ours.running_mean, theirs.running_mean, numpy.float64, "running_mean")
    close(ours.running_var, theirs.running_var, numpy.float64, "running_var")
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((2, 4, 3, 3))
    close(ours.forward(x), theirs(tt(x)), numpy.float64, "eval forward")


# ---- composites ---------------------------------------------------------------------------

def _copy_conv(ours: Conv2D, theirs: torch.nn.Conv2d) -> None:
    with torch.no_grad():
        theirs.weight.copy_(tt(ours.weight.data))
        if ours.bias is not None:
            theirs.bias.copy_(tt(ours.bias.data))


def _weight_grads(model):
    """For each parameter, the gradient of its layer's weight (bias gradients borrow its scale)."""
    out = []
    def walk(layer):
        if layer.children():
            for child in layer.children():
                walk(child)
        else:
            for _ in layer.parameters():
                out.append(layer.weight.grad)
    walk(model)
    return out


def _scale(theirs: torch.Tensor, weight_grad) -> float:
    """A bias feeding BatchNorm has true gradient 0: measure it on its weight's gradient scale."""
    return max(float(theirs.detach().abs().max()), float(numpy.abs(weight_grad).max()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shortcut", ["identity", "conv"])
def test_residual(shortcut, dtype):
    gpuconv.seed(3)
    tdt = TORCH_DTYPE[dtype]
    if shortcut == "identity":
        body = [Conv2D(3, 3, 3, padding=1, dtype=dtype), BatchNorm2d(3, dtype=dtype), ReLU()]
        skip = None
        tbody = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1, dtype=tdt),
                                    torch.nn.BatchNorm2d(3, dtype=tdt), torch.nn.ReLU())
        tskip = torch.nn.Identity()
    else:
        body = [Conv2D(3, 4, 3, stride=2, padding=1, dtype=dtype), BatchNorm2d(4, dtype=dtype),
                ReLU(), Conv2D(4, 4, 3, padding="same", dtype=dtype)]
        skip = [Conv2D(3, 4, 1, stride=2, bias=False, dtype=dtype), BatchNorm2d(4, dtype=dtype)]
        tbody = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, dtype=tdt),
                                    torch.nn.BatchNorm2d(4, dtype=tdt), torch.nn.ReLU(),
                                    torch.nn.Conv2d(4, 4, 3, padding="same", dtype=tdt))
        tskip = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1, stride=2, bias=False, dtype=tdt),
                                    torch.nn.BatchNorm2d(4, dtype=tdt))
    block = Residual(body, skip)
    for o, t in zip(body + (skip or []), list(tbody) + (list(tskip) if skip else [])):
        if isinstance(o, Conv2D):
            _copy_conv(o, t)
    rng = numpy.random.default_rng(11)
    x = rng.standard_normal((2, 3, 6, 5)).astype(dtype)
    y = block.forward(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = block.backward(dy)
    xt = tt(x, True)
    yt = tbody(xt) + tskip(xt)
    yt.backward(tt(dy))
    close(y, yt, dtype, "forward")
    close(dx, xt.grad, dtype, "input gradient")
    tparams = [p for m in list(tbody) + (list(tskip) if skip else []) for p in m.parameters()]
    ours = block.parameters()
    assert len(ours) == len(tparams)
    for (name, p), q, w in zip(block.named_parameters(), tparams, _weight_grads(block)):
        close(p.grad, q.grad, dtype, f"gradient of {name}", 1.0, _scale(q, w))


def torch_copy(model: Sequential) -> torch.nn.Sequential:
    mods = []
    for layer in model:
        dt = TORCH_DTYPE.get(layer.dtype.type) if layer.dtype is not None else None
        if isinstance(layer, Conv2D):
            m = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                stride=layer.stride, padding=layer.padding, dtype=dt)
            _copy_conv(layer, m)
        elif isinstance(layer, BatchNorm2d):
            m = torch.nn.BatchNorm2d(layer.num_features, layer.eps, layer.momentum, dtype=dt)
        elif isinstance(layer, ReLU):
            m = torch.nn.ReLU()
        elif isinstance(layer, MaxPool2D):
            m = torch.nn.MaxPool2d(layer.kernel_size, layer.stride)
        elif isinstance(layer, Flatten):
            m = torch.nn.Flatten()
        elif isinstance(layer, Dense):
            m = torch.nn.Linear(layer.in_features, layer.out_features, dtype=dt)
            with torch.no_grad():
                m.weight.copy_(tt(layer.weight.data.T))
                m.bias.copy_(tt(layer.bias.data))
        else:
            raise TypeError(layer)
        mods.append(m)
    return torch.nn.Sequential(*mods)


@pytest.mark.parametrize("dtype", DTYPES)
def test_seed_cnn_two_training_steps_then_eval(dtype):
    """Forward/backward of the whole seed CNN equals torch, twice (BN stats move), then eval."""
    gpuconv.seed(4)
    model = seed_cnn(dtype)
    tmodel = torch_copy(model)
    rng = numpy.random.default_rng(12)
    for step in range(2):
        model.zero_grad()
        tmodel.zero_grad()
        x = rng.standard_normal((16, 3, 32, 32)).astype(dtype)
        y = model.forward(x)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = model.backward(dy)
        xt = tt(x, True)
        yt = tmodel(xt)
        yt.backward(tt(dy))
        close(y, yt, dtype, f"step {step} forward")
        close(dx, xt.grad, dtype, f"step {step} input gradient")
        for (name, p), q, w in zip(model.named_parameters(), tmodel.parameters(),
                                   _weight_grads(model)):
            qg = q.grad.T if q.grad.ndim == 2 else q.grad  # Linear.weight is our Dense.weight.T
            close(p.grad, qg, dtype, f"step {step} gradient of {name}", 1.0, _scale(qg, w))
        for (name, b), tb in zip(model.named_buffers(), [b for b in tmodel.buffers()
                                                         if b.dtype.is_floating_point]):
            close(b, tb, dtype, f"step {step} buffer {name}")
    model.eval()
    tmodel.eval()
    x = rng.standard_normal((4, 3, 32, 32)).astype(dtype)
    close(model.forward(x), tmodel(tt(x)), dtype, "eval forward")


def test_flatten_matches_torch():
    x = numpy.random.default_rng(13).standard_normal((2, 3, 4, 5))
    f = Flatten()
    y = f.forward(x)
    numpy.testing.assert_array_equal(y, torch.nn.Flatten()(tt(x)).numpy())
    numpy.testing.assert_array_equal(f.backward(y), x)


# ---- dropout (statistics: torch's random stream differs) --------------------------------

def _binomial_ok(kept: int, total: int, p_keep: float, sigmas: float = 5.0) -> bool:
    sd = (total * p_keep * (1 - p_keep)) ** 0.5
    return abs(kept - total * p_keep) <= sigmas * sd + 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_statistics_scaling_and_backward(p, dtype):
    x = (numpy.random.default_rng(14).random((64, 50)) + 0.5).astype(dtype)  # nonzero
    layer = Dropout(p)
    y = layer.forward(x)
    assert y.dtype == dtype
    kept = y != 0
    assert _binomial_ok(int(kept.sum()), x.size, 1 - p), f"kept {kept.mean():.3f}, p={p}"
    close(y[kept], x[kept] / (1 - p), dtype, "kept units are scaled by 1/(1-p)")
    dy = numpy.random.default_rng(15).standard_normal(x.shape).astype(dtype)
    dx = layer.backward(dy)
    assert (dx[~kept] == 0).all(), "backward must use the forward mask"
    close(dx[kept], dy[kept] / (1 - p), dtype, "backward scaling")
    y2 = layer.forward(x)
    assert not numpy.array_equal(y2 != 0, kept), "a fresh mask per forward call"


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_dropout2d_zeroes_whole_channels(p):
    x = (numpy.random.default_rng(16).random((32, 16, 3, 4)) + 0.5).astype(numpy.float32)
    layer = Dropout2d(p)
    y = layer.forward(x)
    channel_kept = (y != 0).reshape(32, 16, -1)
    assert (channel_kept.all(axis=2) | ~channel_kept.any(axis=2)).all(), "partial channels"
    kept = channel_kept.all(axis=2)
    assert _binomial_ok(int(kept.sum()), kept.size, 1 - p)
    close(y[kept], x[kept] / (1 - p), numpy.float32, "scaling")
    dx = layer.backward(numpy.ones_like(x))
    numpy.testing.assert_array_equal(dx != 0, y != 0)
    with pytest.raises(ValueError, match="Dropout2d"):
        Dropout2d(0.5).forward(numpy.ones((2, 3), numpy.float32))


@pytest.mark.parametrize("cls", [Dropout, Dropout2d])
def test_dropout_eval_p0_p1(cls):
    x = (numpy.random.default_rng(17).random((4, 3, 2, 2)) + 0.5).astype(numpy.float32)
    layer = cls(0.5).eval()
    numpy.testing.assert_array_equal(layer.forward(x), x)
    numpy.testing.assert_array_equal(layer.backward(x), x)
    zero = cls(0.0)
    numpy.testing.assert_array_equal(zero.forward(x), x)
    numpy.testing.assert_array_equal(zero.backward(x), x)
    one = cls(1.0)
    y = one.forward(x)
    assert y.dtype == x.dtype and not y.any() and numpy.isfinite(y).all()
    assert not one.backward(x).any()
    for bad in (-0.1, 1.5, True, "0.5", None, float("nan")):
        with pytest.raises(ValueError):
            cls(bad)
    assert cls(numpy.float32(0.25)).p == 0.25  # NumPy scalars are valid probabilities


def test_dropout_is_reproducible_under_gpuconv_seed():
    x = numpy.ones((8, 8), numpy.float32)
    gpuconv.seed(21)
    a = Dropout(0.5).forward(x)
    gpuconv.seed(21)
    b = Dropout(0.5).forward(x)
    numpy.testing.assert_array_equal(a, b)


# ---- airbench building blocks: GELU, Multiply, BatchNorm with a frozen weight ----------------

from gpuconv.layers import GELU, Multiply  # noqa: E402


def _gelu_config(rng, i: int) -> dict:
    ndim = int(rng.integers(1, 5))
    return dict(shape=tuple(int(v) for v in rng.integers(1, 6, ndim)),
                approximate=["none", "tanh"][i % 2], scale=float(rng.choice([0.5, 1.0, 3.0, 8.0])))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", _configs("gelu", _gelu_config, 20))
def test_gelu(cfg, dtype):
    rng = numpy.random.default_rng(30)
    layer = GELU(cfg["approximate"])
    x = (rng.standard_normal(cfg["shape"]) * cfg["scale"]).astype(dtype)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    xt = tt(x, True)
    yt = F.gelu(xt, approximate=cfg["approximate"])
    yt.backward(tt(dy))
    close(y, yt, dtype, f"gelu {cfg['approximate']} forward")
    close(dx, xt.grad, dtype, f"gelu {cfg['approximate']} input gradient")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_float64_within_1e_7_of_torch_everywhere(approximate):
    """Dense [-10, 10] plus large |x|: forward and derivative (elementwise, absolute)."""
    x = numpy.concatenate([numpy.linspace(-10.0, 10.0, 40001),
                           [-1e6, -1e3, -40.0, -38.0, -30.0, -20.0, 20.0, 30.0, 1e3, 1e6]])
    layer = GELU(approximate)
    y = layer.forward(x)
    dx = layer.backward(numpy.ones_like(x))
    xt = tt(x, True)
    yt = F.gelu(xt, approximate=approximate)
    yt.backward(torch.ones_like(xt))
    scale = numpy.maximum(1.0, numpy.abs(x))  # ~1 ulp of |x| for large |x|
    assert (numpy.abs(y - yt.detach().numpy()) <= 1e-7).all()
    assert (numpy.abs(y - yt.detach().numpy()) / scale <= 4.5e-16).all()
    assert (numpy.abs(dx - xt.grad.numpy()) <= 1e-7).all()
    assert numpy.abs(dx - xt.grad.numpy()).max() <= 1e-14


def test_gelu_float32_within_float32_rounding():
    """float32 against torch's float64 GELU (exact to ~2e-15 here): within an ulp of
    max(|x|, 1) forward (measured 0.95; tanh form 1.33), derivative within 2 float32
    epsilons (tanh form: 12, measured 10.3, from 1 - tanh^2 near tanh = 1); torch's own
    float32 GELU is compared with 1e-6 (its error: ~1e-6 for x near -3)."""
    x = numpy.linspace(-10.0, 10.0, 20001).astype(numpy.float32)
    for approximate, ulps, grad_eps in (("none", 1.0, 2.0), ("tanh", 1.5, 12.0)):
        layer = GELU(approximate)
        y = layer.forward(x)
        dx = layer.backward(numpy.ones_like(x))
        x64 = tt(x.astype(numpy.float64), True)
        exact = F.gelu(x64, approximate=approximate)
        exact.backward(torch.ones_like(x64))
        ulp = numpy.spacing(numpy.maximum(numpy.abs(x), numpy.float32(1))).astype(numpy.float64)
        assert (numpy.abs(y - exact.detach().numpy()) <= ulps * ulp).all(), approximate
        assert numpy.abs(dx - x64.grad.numpy()).max() <= grad_eps * numpy.finfo(numpy.float32).eps
        theirs = F.gelu(tt(x), approximate=approximate).numpy()
        assert numpy.abs(y - theirs).max() <= 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1 / 9, -3.0, 0.0])
def test_multiply(scale, dtype):
    rng = numpy.random.default_rng(31)
    x = rng.standard_normal((4, 3, 2, 5)).astype(dtype)
    layer = Multiply(scale)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    xt = tt(x, True)
    yt = xt * scale
    yt.backward(tt(dy))
    close(y, yt, dtype, "forward")
    close(dx, xt.grad, dtype, "input gradient")


@pytest.mark.parametrize("dtype", DTYPES)
def test_airbench_batchnorm_with_frozen_weight(dtype):
    """airbench's BatchNorm: PyTorch momentum 0.4, eps 1e-12, weight.requires_grad False."""
    rng = numpy.random.default_rng(32)
    ours = BatchNorm2d(4, eps=1e-12, momentum=0.4, dtype=dtype).freeze("weight")
    theirs = torch.nn.BatchNorm2d(4, eps=1e-12, momentum=0.4, dtype=TORCH_DTYPE[dtype])
    theirs.weight.requires_grad = False
    for mode in ["train", "train", "train", "eval"]:
        ours.train(mode == "train")
        theirs.train(mode == "train")
        ours.zero_grad()
        theirs.zero_grad()
        x = (rng.standard_normal((3, 4, 3, 5)) * 2 + 1).astype(dtype)
        y = ours.forward(x)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = ours.backward(dy)
        xt = tt(x, True)
        yt = theirs(xt)
        yt.backward(tt(dy))
        close(y, yt, dtype, f"{mode} forward")
        close(dx, xt.grad, dtype, f"{mode} input gradient")
        close(ours.bias.grad, theirs.bias.grad, dtype, f"{mode} bias gradient")
        assert theirs.weight.grad is None and not ours.weight.grad.any()
        close(ours.running_var, theirs.running_var, dtype, f"{mode} running_var")
    assert [p.requires_grad for p in ours.parameters()] == \
        [p.requires_grad for p in theirs.parameters()]


@pytest.mark.parametrize("dtype", DTYPES)
def test_airbench_style_stack(dtype):
    """Whitening conv (frozen weight, trainable bias) -> GELU -> conv -> maxpool ->
    BN (frozen weight) -> GELU -> maxpool -> flatten -> Dense (no bias) -> Multiply(1/9):
    outputs and every trainable gradient equal torch's with the same requires_grad."""
    gpuconv.seed(7)
    rng = numpy.random.default_rng(33)
    x = rng.standard_normal((8, 3, 10, 10)).astype(dtype)
    whiten = Conv2D(3, 24, 2, bias=True, dtype=dtype)
    whiten.weight.data[...] = gpuconv.init.patch_whitening(x)
    whiten.bias.data[...] = rng.standard_normal(24) * 0.1
    whiten.freeze("weight")
    conv = Conv2D(24, 8, 3, padding="same", bias=False, dtype=dtype)
    bn = BatchNorm2d(8, eps=1e-12, momentum=0.4, dtype=dtype).freeze("weight")
    head = Dense(8 * 2 * 2, 10, bias=False, dtype=dtype)
    model = Sequential([whiten, GELU(), conv, MaxPool2D(2), bn, GELU(), MaxPool2D(2), Flatten(),
                        head, Multiply(1 / 9)])
    tdt = TORCH_DTYPE[dtype]
    t_whiten = torch.nn.Conv2d(3, 24, 2, dtype=tdt)
    t_conv = torch.nn.Conv2d(24, 8, 3, padding="same", bias=False, dtype=tdt)
    t_bn = torch.nn.BatchNorm2d(8, eps=1e-12, momentum=0.4, dtype=tdt)
    t_head = torch.nn.Linear(8 * 2 * 2, 10, bias=False, dtype=tdt)
    with torch.no_grad():
        t_whiten.weight.copy_(tt(whiten.weight.data))
        t_whiten.bias.copy_(tt(whiten.bias.data))
        t_conv.weight.copy_(tt(conv.weight.data))
        t_head.weight.copy_(tt(head.weight.data.T))
    t_whiten.weight.requires_grad = False
    t_bn.weight.requires_grad = False
    y = model.forward(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = model.backward(dy)
    xt = tt(x, True)
    h = F.gelu(t_whiten(xt))
    h = F.max_pool2d(F.gelu(t_bn(F.max_pool2d(t_conv(h), 2))), 2)
    yt = t_head(h.flatten(1)) * (1 / 9)
    yt.backward(tt(dy))
    close(y, yt, dtype, "forward")
    close(dx, xt.grad, dtype, "input gradient")
    close(whiten.bias.grad, t_whiten.bias.grad, dtype, "whitening bias gradient")
    close(conv.weight.grad, t_conv.weight.grad, dtype, "conv weight gradient")
    close(bn.bias.grad, t_bn.bias.grad, dtype, "bn bias gradient")
    close(head.weight.grad, t_head.weight.grad.T, dtype, "head weight gradient")
    assert not whiten.weight.grad.any() and not bn.weight.grad.any()
    assert len(model.trainable_parameters()) == 4
    assert model.frozen_names() == ["0.weight", "4.weight"]
