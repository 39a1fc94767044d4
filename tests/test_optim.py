"""Optimizers, regularizers and gradient clipping against torch; cpu and fakecupy."""
from __future__ import annotations

import contextlib
import copy
import json

import numpy
import pytest
import torch

import fakecupy
import gpuconv.optim as optim
from gpuconv.backend import device_of, get_device, to_device, to_numpy
from gpuconv.ops import fused
from gpuconv.layers import BatchNorm2d, Conv2D, Dense, Parameter
from gpuconv.containers import Sequential
from conftest import device_fixture_with_second_gpu, on_device  # noqa: F401

device = device_fixture_with_second_gpu()

SHAPES = {"weight": (3, 4), "bias": (3,), "conv.weight": (2, 3, 2, 2)}
STEPS = 5


@contextlib.contextmanager
def no_host_sync(monkeypatch):
    """Make every device->host transfer of a fake array raise inside the block."""
    def refuse(*args, **kwargs):
        raise AssertionError("host/device synchronisation inside an optimizer step")

    original_getattr = fakecupy.FakeArray.__getattr__

    def guarded_getattr(self, name):
        if name in ("item", "tolist"):
            refuse()
        return original_getattr(self, name)

    with monkeypatch.context() as m:
        for name in ("get", "__float__", "__int__", "__bool__", "__index__"):
            m.setattr(fakecupy.FakeArray, name, refuse)
        m.setattr(fakecupy.FakeArray, "__getattr__", guarded_getattr)
        yield


def _host_params(dtype="float64", seed=0):
    rng = numpy.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()}


def _grads(dtype="float64", seed=1):
    rng = numpy.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()}
            for _ in range(STEPS)]


def _ours(host, device):
    return [Parameter(to_device(a.copy(), device), name.split(".")[-1]) for name, a in host.items()]


def _set_grads(params, grads, device):
    for p, g in zip(params, grads.values()):
        with on_device(device):
            p.grad[...] = to_device(g, device)


CASES = [
    ("SGD", dict(lr=0.1), dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9), dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True), dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.8, weight_decay=0.01),
     dict(lr=0.05, momentum=0.8, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3), dict(lr=0.05, momentum=0.8, dampening=0.3)),
    ("SGD", dict(lr=0.1, weight_decay=0.1, nesterov=True, momentum=0.5),
     dict(lr=0.1, weight_decay=0.1, nesterov=True, momentum=0.5)),
    ("Adam", dict(lr=0.01), dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
     dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01), dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, betas=(0.85, 0.995), weight_decay=0.3),
     dict(lr=0.01, betas=(0.85, 0.995), weight_decay=0.3)),
    ("RMSprop", dict(), dict()),
    ("RMSprop", dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.9), dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.01, centered=True), dict(lr=0.01, centered=True)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.05),
     dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.05)),
]
CASE_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}"
            for name, kw, _ in CASES]


def _torch_run(name, kwargs, host, grads, lr_at=None):
    tparams = [torch.tensor(a.copy(), requires_grad=True) for a in host.values()]
    opt = getattr(torch.optim, name)(tparams, **kwargs)
    history = []
    for step, g in enumerate(grads):
        if lr_at and step in lr_at:
            opt.param_groups[0]["lr"] = lr_at[step]
        for t, a in zip(tparams, g.values()):
            t.grad = torch.tensor(a)
        opt.step()
        history.append([t.detach().numpy().copy() for t in tparams])
    return history


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_torch_float64(device, case, monkeypatch):
    name, ours_kw, torch_kw = case
    host, grads = _host_params(), _grads()
    lr_at = {3: 0.5 * (ours_kw.get("lr", 0.01))}  # a scheduler changing lr mid-run
    expected = _torch_run(name, torch_kw, host, grads, lr_at)
    params = _ours(host, device)
    opt = getattr(optim, name)(params, **ours_kw)
    for step, g in enumerate(grads):
        if step in lr_at:
            opt.lr = lr_at[step]
        _set_grads(params, g, device)
        with no_host_sync(monkeypatch):
            opt.step()
        for p, ref in zip(params, expected[step]):
            assert device_of(p.data) == get_device(device)
            numpy.testing.assert_allclose(to_numpy(p.data), ref, rtol=1e-6, atol=1e-12,
                                          err_msg=f"{name} step {step + 1}")
    for state in opt.state:
        for buf in state.values():
            assert device_of(buf) == get_device(device) and buf.dtype == numpy.float64


@pytest.mark.parametrize("case", [CASES[2], CASES[7], CASES[9], CASES[14]],
                         ids=[CASE_IDS[i] for i in (2, 7, 9, 14)])
def test_matches_torch_float32(device, case):
    name, ours_kw, torch_kw = case
    host, grads = _host_params("float32"), _grads("float32")
    expected = _torch_run(name, torch_kw, host, grads)
    params = _ours(host, device)
    opt = getattr(optim, name)(params, **ours_kw)
    for g in grads:
        _set_grads(params, g, device)
        opt.step()
    for p, ref in zip(params, expected[-1]):
        assert p.data.dtype == numpy.float32
        numpy.testing.assert_allclose(to_numpy(p.data), ref, rtol=1e-5, atol=1e-6)
    assert all(buf.dtype == numpy.float32 for s in opt.state for buf in s.values())


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_state_dict_round_trip_continues_identically(device, case):
    name, ours_kw, _ = case
    host, grads = _host_params(), _grads()
    params = _ours(host, device)
    opt = getattr(optim, name)(params, **ours_kw)
    for g in grads[:3]:
        _set_grads(params, g, device)
        opt.step()
    sd = opt.state_dict()
    json.dumps(sd["config"])
    assert all(isinstance(v, numpy.ndarray) for v in sd["state"].values())
    assert isinstance(sd["step"], int) and sd["step"] == 3
    sd = copy.deepcopy(sd)
    # a fresh optimizer on copies of the parameters, built with other settings
    other_device = "cpu" if device == "fakecupy" else "fakecupy"
    clones = [Parameter(to_device(to_numpy(p.data).copy(), other_device), p.name) for p in params]
    clones_same = [Parameter(to_device(to_numpy(p.data).copy(), device), p.name) for p in params]
    restored = getattr(optim, name)(clones, lr=123.0)
    restored.load_state_dict(sd)
    restored_same = getattr(optim, name)(clones_same, lr=123.0)
    restored_same.load_state_dict(sd)
    assert restored.lr == opt.lr and restored.config() == opt.config()
    for state in restored.state:
        assert all(device_of(b).kind == other_device for b in state.values())
    for g in grads[3:]:
        for ps in (params, clones_same):
            _set_grads(ps, g, device)
        _set_grads(clones, g, other_device)
        opt.step()
        restored.step()
        restored_same.step()
    for p, c, s in zip(params, clones, clones_same):
        numpy.testing.assert_array_equal(to_numpy(s.data), to_numpy(p.data))
        numpy.testing.assert_array_equal(to_numpy(c.data), to_numpy(p.data))


def test_load_state_dict_rejects_mismatches():
    params = _ours(_host_params(), "cpu")
    opt = optim.Adam(params)
    for p in params:
        p.grad[...] = 1.0
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="from a Adam"):
        optim.SGD(params, lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="unexpected entry"):
        optim.Adam(params[:2]).load_state_dict(sd)
    bad = copy.deepcopy(sd)
    bad["state"]["0.exp_avg"] = numpy.zeros((4, 3))
    with pytest.raises(ValueError, match="shape"):
        optim.Adam(params).load_state_dict(bad)


def test_weight_decay_leaves_grad_untouched_and_accepts_models(device):
    model = Sequential([Dense(4, 3), Dense(3, 2)]).astype("float64").to(device)
    for p in model.parameters():
        with on_device(device):
            p.grad[...] = 1.0
    before = [to_numpy(p.grad).copy() for p in model.parameters()]
    opt = optim.SGD(model, lr=0.1, momentum=0.9, weight_decay=0.5)
    assert len(opt.params) == 4
    opt.step()
    for p, g in zip(model.parameters(), before):
        numpy.testing.assert_array_equal(to_numpy(p.grad), g)
    opt.zero_grad()
    assert all(not to_numpy(p.grad).any() for p in model.parameters())


def test_state_follows_parameters_to_another_device():
    params = _ours(_host_params(), "cpu")
    opt = optim.Adam(params, lr=0.01)
    for p in params:
        p.grad[...] = 0.5
    opt.step()
    for p in params:
        p.to("fakecupy")
    opt.step()
    assert all(device_of(b).kind == "fakecupy" for s in opt.state for b in s.values())


def test_bad_hyperparameters_raise():
    params = _ours(_host_params(), "cpu")
    with pytest.raises(ValueError, match="betas"):
        optim.Adam(params, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        optim.RMSprop(params, lr=-1)
    with pytest.raises(TypeError, match="Parameters"):
        optim.SGD([numpy.zeros(3)], lr=0.1)
    assert isinstance(optim.get("adamw", params), optim.AdamW)


# ---- regularizers ------------------------------------------------------------------

def _reg_params(device):
    rng = numpy.random.default_rng(3)
    conv = Conv2D(2, 3, 2).astype("float64")
    bn = BatchNorm2d(3).astype("float64")
    for p in conv.parameters() + bn.parameters():
        p.data[...] = rng.standard_normal(p.shape) + 0.1 * numpy.sign(rng.standard_normal(p.shape))
    return (conv.to(device).parameters() + bn.to(device).parameters())


@pytest.mark.parametrize("reg", [optim.L1(0.3), optim.L2(0.7), optim.ElasticNet(1e-4, 1e-4),
                                 optim.ElasticNet(0.2, 0.5, include="all")],
                         ids=["L1", "L2", "ElasticNet-seed", "ElasticNet-all"])
def test_regularizer_gradient_matches_finite_differences(device, reg):
    params = _reg_params(device)
    for p in params:
        p.zero_grad()
    reg.apply(params)
    h = 1e-6
    for p in params:
        host = to_numpy(p.data).copy()
        numeric = numpy.zeros_like(host)
        for idx in numpy.ndindex(host.shape):
            values = []
            for sign in (1, -1):
                shifted = host.copy()
                shifted[idx] += sign * h
                p.data = to_device(shifted, device)
                values.append(float(to_numpy(reg.penalty(params))))
            numeric[idx] = (values[0] - values[1]) / (2 * h)
        p.data = to_device(host, device)
        numpy.testing.assert_allclose(to_numpy(p.grad), numeric, rtol=1e-6, atol=1e-9,
                                      err_msg=f"{reg!r} {p!r}")
        selected = reg.include == "all" or (p.name == "weight" and p.data.ndim >= 2)
        assert bool(numpy.any(numeric)) == selected


def test_regularizer_penalty_values(device):
    params = _reg_params(device)
    kernel = to_numpy(params[0].data)
    value = optim.ElasticNet(0.2, 0.5).penalty(params)
    assert device_of(value) == get_device(device) and tuple(value.shape) == ()
    expected = 0.2 * numpy.abs(kernel).sum() + 0.25 * (kernel ** 2).sum()
    numpy.testing.assert_allclose(to_numpy(value), expected, rtol=1e-12)


def test_l2_regularizer_in_sgd_equals_torch_weight_decay(device):
    host, grads = _host_params(), _grads()
    expected = _torch_run("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.05), host, grads)
    params = _ours(host, device)
    opt = optim.SGD(params, lr=0.1, momentum=0.9, regularizer=optim.L2(0.05, include="all"))
    for g in grads:
        _set_grads(params, g, device)
        opt.step()
    for p, ref in zip(params, expected[-1]):
        numpy.testing.assert_allclose(to_numpy(p.data), ref, rtol=1e-10)


# ---- gradient clipping -------------------------------------------------------------

@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(device, max_norm, monkeypatch):
    host, grads = _host_params(), _grads()[0]
    tparams = [torch.tensor(a, requires_grad=True) for a in host.values()]
    for t, g in zip(tparams, grads.values()):
        t.grad = torch.tensor(g.copy())
    ref_norm = torch.nn.utils.clip_grad_norm_(tparams, max_norm)
    params = _ours(host, device)
    _set_grads(params, grads, device)
    with no_host_sync(monkeypatch):
        norm = optim.clip_grad_norm(params, max_norm)
    assert device_of(norm) == get_device(device) and tuple(norm.shape) == ()
    numpy.testing.assert_allclose(to_numpy(norm), ref_norm.numpy(), rtol=1e-12)
    for p, t in zip(params, tparams):
        numpy.testing.assert_allclose(to_numpy(p.grad), t.grad.numpy(), rtol=1e-12)
    if max_norm < 1:
        total = numpy.sqrt(sum((to_numpy(p.grad) ** 2).sum() for p in params))
        assert total == pytest.approx(max_norm, rel=1e-5)


def test_clip_grad_norm_float32_keeps_dtype(device):
    params = _ours(_host_params("float32"), device)
    _set_grads(params, _grads("float32")[0], device)
    norm = optim.clip_grad_norm(params, 1.0)
    assert norm.dtype == numpy.float32
    assert all(p.grad.dtype == numpy.float32 for p in params)


def _adam_kernel_stand_in(xp, name, dtype, n, args):
    """What the fused ``adam_update`` CUDA kernel computes (gpuconv/ops/cuda_source.py),
    elementwise on the fake CuPy: stands in for the launch, which needs a GPU."""
    assert name == "adam_update" and n == args[0].size
    param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, step_size, bc2_sqrt, wd, \
        decoupled, _ = args
    if int(decoupled):
        param *= 1 - lr * wd
    elif wd != 0:
        grad = grad + wd * param
    exp_avg[...] = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq[...] = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    param -= step_size * (exp_avg / (xp.sqrt(exp_avg_sq) / bc2_sqrt + eps))


@pytest.mark.parametrize("case", [CASES[7], CASES[9]], ids=[CASE_IDS[i] for i in (7, 9)])
def test_adam_with_the_fused_kernel_allocates_no_scratch(case, monkeypatch):
    # the kernel needs no scratch: the two parameter-sized buffers of the xp path are
    # made only when that path runs
    name, ours_kw, torch_kw = case
    host, grads = _host_params(), _grads()
    expected = _torch_run(name, torch_kw, host, grads)
    launches, allocations = [], []
    monkeypatch.setattr(fused, "_use_cuda_kernel", lambda xp, *arrays: True)
    monkeypatch.setattr(fused, "_launch", lambda *a: launches.append(a[1]) or
                        _adam_kernel_stand_in(*a))

    def counted(fn):
        real = getattr(fakecupy.xp, fn)
        return lambda *a, **k: allocations.append(fn) or real(*a, **k)

    for fn in ("empty", "empty_like"):  # what the scratch buffers would be made with
        monkeypatch.setattr(fakecupy.xp, fn, counted(fn))
    params = _ours(host, fakecupy.DEVICE)
    opt = getattr(optim, name)(params, **ours_kw)
    for g in grads:
        _set_grads(params, g, fakecupy.DEVICE)
        opt.step()
    assert len(launches) == STEPS * len(params) and set(launches) == {"adam_update"}
    assert opt._work == [{} for _ in params] and allocations == []
    for p, ref in zip(params, expected[-1]):
        numpy.testing.assert_allclose(to_numpy(p.data), ref, rtol=1e-6, atol=1e-12)


def test_adam_on_the_xp_path_keeps_its_two_scratch_buffers(device):
    params = _ours(_host_params(), device)
    opt = optim.Adam(params, lr=0.01, weight_decay=0.1)
    for g in _grads()[:2]:
        _set_grads(params, g, device)
        opt.step()
        buffers = [sorted(w) for w in opt._work]
        assert buffers == [[0, 1] for _ in params]


@pytest.mark.parametrize("case", [CASES[7], CASES[9]], ids=[CASE_IDS[i] for i in (7, 9)])
def test_adam_numpy_path_runs_in_cache_sized_blocks_with_the_same_result(case, monkeypatch):
    """Parameters above ``ADAM_BLOCK`` elements are updated block by block (a last,
    shorter block included): bit for bit what one pass over the whole array gives, and
    torch's result."""
    name, ours_kw, torch_kw = case
    host, grads = _host_params(), _grads()
    expected = _torch_run(name, torch_kw, host, grads)
    real = fused._adam_passes

    def run(block):
        blocks = []
        monkeypatch.setattr(fused, "ADAM_BLOCK", block)
        monkeypatch.setattr(fused, "_adam_passes", lambda *a: (blocks.append(a[1].size),
                                                               real(*a)))
        params = _ours(host, "cpu")
        opt = getattr(optim, name)(params, **ours_kw)
        for g in grads:
            _set_grads(params, g, "cpu")
            opt.step()
        return [p.data for p in params], blocks

    whole, whole_blocks = run(10 ** 9)
    blocked, blocks = run(5)
    sizes = [a.size for a in host.values()]                            # 12, 3, 24
    assert whole_blocks == sizes * STEPS
    assert blocks == [5, 5, 2, 3, 5, 5, 5, 5, 4] * STEPS
    for b, w, ref in zip(blocked, whole, expected[-1]):
        numpy.testing.assert_array_equal(b, w)
        numpy.testing.assert_allclose(b, ref, rtol=1e-6, atol=1e-12)
