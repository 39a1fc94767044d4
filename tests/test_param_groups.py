"""Parameter groups, frozen parameters and airbench's SGD mapping, against torch.optim.

Two groups with different lr / weight decay (and other settings) over several
float64 steps must equal torch exactly (rtol 1e-10 here 1e-6 relative to
updates that differ from torch's at rounding level); a frozen parameter
(``requires_grad`` False) is skipped like a torch tensor whose ``.grad`` is
None. Runs on the CPU and on the strict fake CuPy; steps must not sync.
"""
from __future__ import annotations

import copy
import json

import numpy
import pytest
import torch

import gpuconv.optim as optim
from gpuconv.backend import cuda_is_available, cuda_unavailable_reason, device_of, get_device, to_device, to_numpy
from gpuconv.layers import Parameter
from test_optim import no_host_sync
from conftest import device_fixture_with_second_gpu, on_device  # noqa: F401

device = device_fixture_with_second_gpu()

SHAPES = {"weight": (3, 4), "bias": (3,), "conv.weight": (2, 3, 2, 2), "norm.bias": (5,)}
STEPS = 6
GROUP_SPLIT = 2  # group 0: the first two parameters, group 1: the rest


class Freezable(Parameter):
    """A Parameter that can carry ``requires_grad`` whether or not the base class has it."""


def _host(seed=0):
    rng = numpy.random.default_rng(seed)
    return {name: rng.standard_normal(shape) for name, shape in SHAPES.items()}


def _grads(seed=1, steps=STEPS):
    rng = numpy.random.default_rng(seed)
    return [{name: rng.standard_normal(shape) for name, shape in SHAPES.items()}
            for _ in range(steps)]


def _ours(host, device):
    return [Freezable(to_device(a.copy(), device), name.split(".")[-1])
            for name, a in host.items()]


def _groups(params, g0, g1):
    return [{"params": params[:GROUP_SPLIT], **g0}, {"params": params[GROUP_SPLIT:], **g1}]


# (optimizer, constructor kwargs, group-0 overrides, group-1 overrides)
CASES = [
    ("SGD", dict(lr=0.1), dict(lr=0.3), dict()),
    ("SGD", dict(lr=0.1, momentum=0.9), dict(lr=0.02), dict(momentum=0.5)),
    ("SGD", dict(lr=0.05, momentum=0.85, nesterov=True, weight_decay=0.01),
     dict(lr=0.5, weight_decay=0.2), dict()),
    ("SGD", dict(lr=0.05, weight_decay=0.1), dict(weight_decay=0.0), dict(lr=0.2)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3), dict(dampening=0.0), dict(lr=0.01)),
    ("Adam", dict(lr=0.01, weight_decay=0.1), dict(lr=0.05, weight_decay=0.0),
     dict(betas=(0.8, 0.99))),
    ("AdamW", dict(lr=0.01, weight_decay=0.3), dict(lr=0.002, weight_decay=0.05), dict()),
    ("RMSprop", dict(lr=0.01, weight_decay=0.05), dict(lr=0.001, momentum=0.9),
     dict(centered=True, weight_decay=0.0)),
]
CASE_IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


def _torch_run(name, kwargs, g0, g1, host, grads, lr_at=None, frozen=None):
    """torch reference: a dict of per-step parameter values; ``frozen[step]`` = indices
    whose grad is None at that step."""
    tparams = [torch.tensor(a.copy(), requires_grad=True) for a in host.values()]
    opt = getattr(torch.optim, name)(_groups(tparams, g0, g1), **kwargs)
    history = []
    for step, g in enumerate(grads):
        if lr_at and step in lr_at:
            for group, lr in zip(opt.param_groups, lr_at[step]):
                group["lr"] = lr
        for i, (t, a) in enumerate(zip(tparams, g.values())):
            t.grad = None if frozen and i in frozen.get(step, ()) else torch.tensor(a)
        opt.step()
        history.append([t.detach().numpy().copy() for t in tparams])
    return history, opt


def _set_grads(params, grads, device):
    for p, g in zip(params, grads.values()):
        with on_device(device):
            p.grad[...] = to_device(g, device)


def _assert_equal_torch(params, ref, what):
    for i, (p, r) in enumerate(zip(params, ref)):
        numpy.testing.assert_allclose(to_numpy(p.data), r, rtol=1e-10, atol=1e-13,
                                      err_msg=f"{what}: parameter {i}")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_two_groups_match_torch_float64(device, case, monkeypatch):
    name, kwargs, g0, g1 = case
    host, grads = _host(), _grads()
    base = kwargs.get("lr", 0.01)
    lr_at = {4: [0.5 * g0.get("lr", base), 2.0 * g1.get("lr", base)]}  # a schedule, per group
    expected, _ = _torch_run(name, kwargs, g0, g1, host, grads, lr_at)
    params = _ours(host, device)
    opt = getattr(optim, name)(_groups(params, g0, g1), **kwargs)
    # the groups carry every hyper-parameter, defaults filled in, as torch's do
    tensors = [torch.zeros(1, requires_grad=True) for _ in params]
    topt = getattr(torch.optim, name)(_groups(tensors, g0, g1), **kwargs)
    for ours, theirs in zip(opt.param_groups, topt.param_groups):
        for key in opt.defaults:
            value = ours[key]
            assert (list(value) if isinstance(value, tuple) else value) == \
                (list(theirs[key]) if isinstance(theirs[key], tuple) else theirs[key]), key
    for step, g in enumerate(grads):
        if step in lr_at:
            for group, lr in zip(opt.param_groups, lr_at[step]):
                group["lr"] = lr
        _set_grads(params, g, device)
        with no_host_sync(monkeypatch):
            opt.step()
        _assert_equal_torch(params, expected[step], f"{name} step {step + 1}")
    assert all(device_of(b) == get_device(device) for s in opt.state for b in s.values())


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_group_state_dict_round_trip(device, case):
    name, kwargs, g0, g1 = case
    host, grads = _host(), _grads()
    params = _ours(host, device)
    opt = getattr(optim, name)(_groups(params, {**g0, "name": "first"}, g1), **kwargs)
    for g in grads[:3]:
        _set_grads(params, g, device)
        opt.step()
    opt.param_groups[1]["lr"] *= 0.5  # a scheduled lr must survive the round trip
    sd = opt.state_dict()
    skeleton = {k: v for k, v in sd.items() if k != "state"}
    assert json.loads(json.dumps(skeleton)) == skeleton
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2, 3]]
    assert sd["param_groups"][0]["name"] == "first" and sd["param_steps"] == [3] * 4
    sd = copy.deepcopy(sd)
    clones = [Freezable(to_device(to_numpy(p.data).copy(), device), p.name) for p in params]
    restored = getattr(optim, name)(_groups(clones, {}, {}), lr=7.0)
    restored.load_state_dict(sd)
    for ours, theirs in zip(restored.param_groups, opt.param_groups):
        assert {k: v for k, v in ours.items() if k != "params"} == \
            {k: v for k, v in theirs.items() if k != "params"}
    assert restored.config() == opt.config() and restored.lr == opt.lr
    for g in grads[3:]:
        _set_grads(params, g, device)
        _set_grads(clones, g, device)
        opt.step()
        restored.step()
    for p, c in zip(params, clones):
        numpy.testing.assert_array_equal(to_numpy(c.data), to_numpy(p.data))


def test_pre_group_state_dict_still_loads():
    """The layout written before groups existed: config holds the current lr, no groups."""
    host, grads = _host(), _grads()
    params = _ours(host, "cpu")
    opt = optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True)
    for g in grads[:3]:
        _set_grads(params, g, "cpu")
        opt.step()
    opt.lr = 0.05
    new = opt.state_dict()
    old = {"config": {**new["config"], "lr": 0.05}, "step": new["step"], "state": new["state"]}
    clones = [Freezable(to_numpy(p.data).copy(), p.name) for p in params]
    restored = optim.SGD(clones, lr=1.0)
    restored.load_state_dict(old)
    assert restored.lr == 0.05 and restored.param_groups[0]["momentum"] == 0.9
    assert restored.state_dict()["param_steps"] == [3] * 4
    for g in grads[3:]:
        _set_grads(params, g, "cpu")
        _set_grads(clones, g, "cpu")
        opt.step()
        restored.step()
    for p, c in zip(params, clones):
        numpy.testing.assert_array_equal(c.data, p.data)


def test_group_state_dict_mismatches_raise_and_change_nothing():
    params = _ours(_host(), "cpu")
    opt = optim.Adam(_groups(params, {"lr": 0.1}, {}), lr=0.01)
    for p in params:
        p.grad[...] = 1.0
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="2 parameter groups, this optimizer 1"):
        optim.Adam(params, lr=0.01).load_state_dict(sd)
    other = optim.Adam([{"params": params[:1]}, {"params": params[1:]}], lr=0.5)
    with pytest.raises(ValueError, match="group 0 has 2 parameters"):
        other.load_state_dict(sd)
    bad = copy.deepcopy(sd)
    bad["param_groups"][1]["betas"] = [1.5, 0.9]
    target = optim.Adam(_groups(params, {}, {}), lr=0.5)
    with pytest.raises(ValueError, match="betas"):
        target.load_state_dict(bad)
    assert target.lr == 0.5 and target.state == [{}] * 4  # untouched
    bad = copy.deepcopy(sd)
    bad["param_groups"][0]["momentum"] = 0.9
    with pytest.raises(ValueError, match="unknown keys"):
        target.load_state_dict(bad)


def test_defaults_group_keys_and_validation():
    params = _ours(_host(), "cpu")
    opt = optim.SGD([{"params": params[:2], "lr": 0.5}, {"params": params[2:], "lr": 0.1}],
                    momentum=0.85, nesterov=True)  # airbench's call: no lr outside the groups
    assert opt.defaults["lr"] is None and opt.param_groups[1]["momentum"] == 0.85
    assert opt.params == params and len(opt.state) == 4
    with pytest.raises(ValueError, match="no lr"):
        optim.SGD([{"params": params[:2], "lr": 0.5}, {"params": params[2:]}], momentum=0.9)
    with pytest.raises(ValueError, match="unknown parameter-group keys"):
        optim.SGD([{"params": params, "weight_decya": 0.1}], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": params[:2]}, {"params": params[1:]}], lr=0.1)
    with pytest.raises(ValueError, match=r"parameter group 1\): nesterov"):
        optim.SGD([{"params": params[:2]}, {"params": params[2:], "momentum": 0.0}], lr=0.1,
                  momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([{"params": params, "betas": (0.9, 1.0)}])
    with pytest.raises(TypeError, match="not both"):
        optim.SGD([params[0], {"params": params[1:]}], lr=0.1)
    opt = optim.Adam([{"params": params[0]}], lr=0.1)   # a single Parameter in a group
    opt.add_param_group({"params": params[1:], "lr": 0.2})
    assert [len(g["params"]) for g in opt.param_groups] == [1, 3] and len(opt.state) == 4
    assert "2 groups" in repr(opt)


def test_lr_property_is_the_first_group_and_keeps_ratios():
    params = _ours(_host(), "cpu")
    opt = optim.SGD(_groups(params, {"lr": 0.64}, {"lr": 0.01}), lr=0.01)
    assert opt.lr == 0.64
    opt.lr = 0.32  # e.g. ReduceLROnPlateau-style halving through the old single-lr API
    assert [g["lr"] for g in opt.param_groups] == [0.32, pytest.approx(0.005, rel=1e-15)]
    opt.lr = 0.32  # setting the current value changes nothing (a resumed fit does this)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.005, rel=1e-15)
    opt.param_groups[0]["lr"] = 0.0
    with pytest.raises(ValueError, match="cannot be scaled"):
        opt.lr = 0.1
    single = optim.SGD(params, lr=0.1)
    single.lr = 0.0
    single.lr = 0.2
    assert single.param_groups[0]["lr"] == 0.2


# ---- frozen parameters -------------------------------------------------------------

@pytest.mark.parametrize("case", [CASES[2], CASES[5], CASES[6], CASES[7]],
                         ids=[CASE_IDS[i] for i in (2, 5, 6, 7)])
def test_frozen_parameter_is_skipped_like_torch_none_grad(device, case, monkeypatch):
    """Parameter 1 frozen for steps 0-2, then trainable; parameter 3 frozen throughout:
    no update, no state, and Adam's bias correction counts the parameter's own steps."""
    name, kwargs, g0, g1 = case
    host, grads = _host(), _grads()
    frozen = {step: {1, 3} if step < 3 else {3} for step in range(STEPS)}
    expected, _ = _torch_run(name, kwargs, g0, g1, host, grads, frozen=frozen)
    params = _ours(host, device)
    opt = getattr(optim, name)(_groups(params, g0, g1), **kwargs)
    for step, g in enumerate(grads):
        for i, p in enumerate(params):
            p.requires_grad = i not in frozen[step]
        _set_grads(params, g, device)
        with no_host_sync(monkeypatch):
            opt.step()
        _assert_equal_torch(params, expected[step], f"{name} step {step + 1}")
        if step < 3:
            assert opt.state[1] == {}
    assert opt.state[3] == {}
    numpy.testing.assert_array_equal(to_numpy(params[3].data), host["norm.bias"])
    assert opt.state_dict()["param_steps"] == [STEPS, STEPS - 3, STEPS, 0]


def test_frozen_parameters_skipped_by_regularizers(device):
    params = _ours(_host(), device)
    reg = optim.ElasticNet(0.2, 0.5, include="all")
    full = to_numpy(reg.penalty(params))
    params[0].requires_grad = False
    for p in params:
        p.zero_grad()
    reg.apply(params)
    assert not to_numpy(params[0].grad).any()
    assert all(to_numpy(p.grad).any() for p in params[1:])
    w = to_numpy(params[0].data)
    expected = full - 0.2 * numpy.abs(w).sum() - 0.25 * (w ** 2).sum()
    numpy.testing.assert_allclose(to_numpy(reg.penalty(params)), expected, rtol=1e-12)
    assert params[0] not in reg.selected(params)
    # through an optimizer: the frozen parameter does not move although L2 applies to "all"
    opt = optim.SGD(params, lr=0.1, regularizer=optim.L2(0.5, include="all"))
    before = to_numpy(params[0].data).copy()
    opt.step()
    numpy.testing.assert_array_equal(to_numpy(params[0].data), before)


def test_frozen_parameters_skipped_by_clipping(device, monkeypatch):
    host, grads = _host(), _grads()[0]
    tparams = [torch.tensor(a, requires_grad=True) for a in host.values()]
    for i, (t, g) in enumerate(zip(tparams, grads.values())):
        t.grad = None if i == 2 else torch.tensor(g.copy())  # torch: a frozen tensor has no grad
    ref_norm = torch.nn.utils.clip_grad_norm_([t for t in tparams if t.grad is not None], 0.5)
    params = _ours(host, device)
    _set_grads(params, grads, device)
    params[2].requires_grad = False
    with no_host_sync(monkeypatch):
        norm = optim.clip_grad_norm(params, 0.5)
    numpy.testing.assert_allclose(to_numpy(norm), ref_norm.numpy(), rtol=1e-12)
    numpy.testing.assert_array_equal(to_numpy(params[2].grad), grads["conv.weight"])
    for i, (p, t) in enumerate(zip(params, tparams)):
        if i != 2:
            numpy.testing.assert_allclose(to_numpy(p.grad), t.grad.numpy(), rtol=1e-12)
    numpy.testing.assert_allclose(to_numpy(optim.grad_norm(params)), 0.5, rtol=1e-5)


# ---- the fused Adam kernel path: per-group values --------------------------------------

def test_adam_calls_the_fused_update_with_each_groups_values(monkeypatch):
    import gpuconv.optim.adam as adam_module

    calls = []
    real = adam_module.adam_update

    def spy(param, grad, m, v, **kw):
        calls.append({k: kw[k] for k in ("lr", "beta1", "beta2", "eps", "weight_decay", "step",
                                          "decoupled")})
        real(param, grad, m, v, **kw)

    monkeypatch.setattr(adam_module, "adam_update", spy)
    params = _ours(_host(), "cpu")
    opt = optim.AdamW(_groups(params, {"lr": 0.1, "weight_decay": 0.5, "eps": 1e-6},
                              {"betas": (0.8, 0.9)}), lr=0.01)
    params[3].requires_grad = False
    opt.step()
    opt.step()
    assert len(calls) == 6  # 3 trainable parameters, 2 steps
    assert calls[0] == dict(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.5, step=1,
                            decoupled=True)
    assert calls[2] == dict(lr=0.01, beta1=0.8, beta2=0.9, eps=1e-8, weight_decay=0.01, step=1,
                            decoupled=True)
    assert calls[5]["step"] == 2


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_is_available(), reason=f"needs CUDA: {cuda_unavailable_reason()}")
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_adam_kernel_with_groups_matches_cpu(name, dtype):
    """On a GPU the fused kernel runs once per parameter with its group's values."""
    host = {k: v.astype(dtype) for k, v in _host().items()}
    grads = [{k: v.astype(dtype) for k, v in g.items()} for g in _grads()]
    results = []
    for device in ("cuda", "cpu"):
        params = [Freezable(to_device(a.copy(), device), n) for n, a in host.items()]
        opt = getattr(optim, name)(_groups(params, {"lr": 0.05, "weight_decay": 0.1},
                                           {"betas": (0.8, 0.99)}), lr=0.01)
        params[3].requires_grad = False
        for g in grads:
            _set_grads(params, g, device)
            opt.step()
        results.append([to_numpy(p.data) for p in params])
    rtol = 1e-5 if dtype == "float32" else 1e-12
    for gpu, cpu in zip(*results):
        numpy.testing.assert_allclose(gpu, cpu, rtol=rtol, atol=rtol)
    numpy.testing.assert_array_equal(results[0][3], host["norm.bias"])


# ---- airbench ---------------------------------------------------------------------

def test_airbench_hyperparameters_follow_the_published_formulas():
    h = optim.airbench_sgd_hyperparameters(1024)
    kilostep_scale = 1024 * (1 + 1 / (1 - 0.85))
    assert h["momentum"] == 0.85 and h["nesterov"] is True
    assert h["lr"] == pytest.approx(11.5 / kilostep_scale, rel=1e-15)
    wd = 0.0153 * 1024 / kilostep_scale
    assert h["weight_decay"] == pytest.approx(wd / h["lr"], rel=1e-15)
    assert h["bias_lr"] == pytest.approx(64 * h["lr"], rel=1e-15)
    assert h["bias_weight_decay"] == pytest.approx(wd / h["bias_lr"], rel=1e-15)
    # the per-step decay lr * weight_decay is the same in both groups: bias_scaler scales
    # the lr, not the decay; it is proportional to the batch size (per example)
    assert h["lr"] * h["weight_decay"] == pytest.approx(h["bias_lr"] * h["bias_weight_decay"])
    half = optim.airbench_sgd_hyperparameters(512)
    assert half["lr"] == h["lr"]
    assert half["lr"] * half["weight_decay"] == pytest.approx(0.5 * h["lr"] * h["weight_decay"])
    with pytest.raises(ValueError, match="momentum"):
        optim.airbench_sgd_hyperparameters(1024, momentum=1.0)


def test_airbench_optimizer_setup_matches_torch(device):
    """airbench94's own torch code (param_configs + SGD(nesterov) + LambdaLR) vs gpuconv."""
    host, grads = _host(), _grads()
    batch_size, momentum = 1024, 0.85
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))      # airbench94.py, main()
    lr = 11.5 / kilostep_scale
    wd = 0.0153 * batch_size / kilostep_scale
    lr_biases = lr * 64.0
    tparams = [torch.tensor(a.copy(), requires_grad=True) for a in host.values()]
    norm_biases, other = tparams[3:], tparams[:3]
    topt = torch.optim.SGD([dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                            dict(params=other, lr=lr, weight_decay=wd / lr)],
                           momentum=momentum, nesterov=True)
    schedule = numpy.interp(numpy.arange(STEPS + 1), [0, 2, STEPS], [0.2, 1.0, 0.07])
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, lambda i: schedule[i])

    h = optim.airbench_sgd_hyperparameters(batch_size)
    params = _ours(host, device)
    opt = optim.SGD([{"params": params[3:], "lr": h["bias_lr"],
                      "weight_decay": h["bias_weight_decay"]},
                     {"params": params[:3], "lr": h["lr"], "weight_decay": h["weight_decay"]}],
                    momentum=h["momentum"], nesterov=h["nesterov"])
    sched = optim.lr_scheduler.PiecewiseLinear(opt, [0, 2, STEPS], [0.2, 1.0, 0.07])
    for g in grads:
        for t, a in zip(tparams, g.values()):
            t.grad = torch.tensor(a)
        topt.step()
        tsched.step()
        _set_grads(params, g, device)
        opt.step()
        sched.step()
        assert [gr["lr"] for gr in opt.param_groups] == \
            pytest.approx([gr["lr"] for gr in topt.param_groups], rel=1e-12)
    for p, t in zip(params, tparams):
        numpy.testing.assert_allclose(to_numpy(p.data), t.detach().numpy(), rtol=1e-10,
                                      atol=1e-13)
