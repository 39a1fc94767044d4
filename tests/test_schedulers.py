"""Learning-rate schedulers: lr sequences against torch.optim.lr_scheduler (>= 30 steps)."""
from __future__ import annotations

import json

import numpy
import pytest
import torch

import gpuconv.optim as optim
from gpuconv.layers import Parameter
from gpuconv.optim import lr_scheduler as S

BASE_LR = 0.1


def _ours(lr=BASE_LR):
    return optim.SGD([Parameter(numpy.zeros(3), "weight")], lr=lr, momentum=0.9)


def _torch_opt(lr=BASE_LR):
    return torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=lr, momentum=0.9)


def _sequence(sched, opt, steps):
    lrs = [opt.lr]
    assert sched.get_last_lr() == opt.lr
    for _ in range(steps):
        sched.step()
        assert sched.get_last_lr() == opt.lr
        lrs.append(opt.lr)
    return numpy.array(lrs)


def _torch_sequence(sched, opt, steps):
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return numpy.array(lrs)


def _compare(ours, ref):
    assert len(ours) >= 31
    numpy.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("step_size, gamma", [(7, 0.1), (3, 0.5), (1, 0.9)])
def test_step_lr(step_size, gamma):
    opt, topt = _ours(), _torch_opt()
    ours = _sequence(S.StepLR(opt, step_size, gamma), opt, 40)
    ref = _torch_sequence(torch.optim.lr_scheduler.StepLR(topt, step_size, gamma), topt, 40)
    _compare(ours, ref)
    assert ours[-1] < ours[0]


@pytest.mark.parametrize("T_max, eta_min", [(30, 0.0), (10, 1e-3), (7, 0.0)])
def test_cosine_annealing_without_warmup_equals_torch(T_max, eta_min):
    opt, topt = _ours(), _torch_opt()
    ours = _sequence(S.CosineAnnealingLR(opt, T_max, eta_min), opt, 40)  # past T_max too
    ref = _torch_sequence(torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max, eta_min),
                          topt, 40)
    _compare(ours, ref)


@pytest.mark.parametrize("warmup, start, T_max, eta_min", [(5, 0.1, 25, 1e-4), (3, 0.5, 40, 0.0),
                                                           (1, 0.01, 30, 0.0)])
def test_cosine_annealing_with_warmup_equals_torch_sequential(warmup, start, T_max, eta_min):
    opt, topt = _ours(), _torch_opt()
    ours = _sequence(S.CosineAnnealingLR(opt, T_max, eta_min, warmup_steps=warmup,
                                         warmup_start_factor=start), opt, 40)
    tl = torch.optim.lr_scheduler
    ref_sched = tl.SequentialLR(
        topt, [tl.LinearLR(topt, start_factor=start, end_factor=1.0, total_iters=warmup),
               tl.CosineAnnealingLR(topt, T_max, eta_min)], milestones=[warmup])
    _compare(ours, _torch_sequence(ref_sched, topt, 40))
    assert ours[0] == pytest.approx(BASE_LR * start)
    assert max(ours) == pytest.approx(BASE_LR)


@pytest.mark.parametrize("kwargs", [
    dict(max_lr=0.5, total_steps=50),
    dict(max_lr=1.0, total_steps=37, pct_start=0.25, anneal_strategy="linear"),
    dict(max_lr=0.3, total_steps=40, div_factor=10.0, final_div_factor=100.0),
])
def test_one_cycle_equals_torch(kwargs):
    opt, topt = _ours(), _torch_opt()
    steps = kwargs["total_steps"] - 1
    ours = _sequence(S.OneCycleLR(opt, **kwargs), opt, steps)
    ref = _torch_sequence(torch.optim.lr_scheduler.OneCycleLR(topt, cycle_momentum=False,
                                                              **kwargs), topt, steps)
    _compare(ours, ref)
    assert S.OneCycleLR.per_batch and not S.StepLR.per_batch
    assert not S.CosineAnnealingLR.per_batch and not S.ReduceLROnPlateau.per_batch


def test_one_cycle_epochs_and_overrun():
    opt = _ours()
    sched = S.OneCycleLR(opt, max_lr=0.2, epochs=3, steps_per_epoch=4)
    assert sched.total_steps == 12 and opt.lr == pytest.approx(0.2 / 25)
    for _ in range(12):
        sched.step()
    with pytest.raises(ValueError, match="total steps"):
        sched.step()


@pytest.mark.parametrize("kwargs", [
    dict(mode="min", factor=0.5, patience=3, min_lr=1e-6, threshold=1e-4),
    dict(mode="min", factor=0.1, patience=0, min_lr=1e-3, threshold=0.01, cooldown=2),
    dict(mode="max", factor=0.5, patience=2, min_lr=0.0, threshold=0.05, threshold_mode="abs"),
])
def test_reduce_on_plateau_equals_torch(kwargs):
    rng = numpy.random.default_rng(0)
    # improves, then plateaus with noise, improves a little, plateaus again
    metric = numpy.concatenate([numpy.linspace(2.0, 1.0, 8), 1.0 + 0.01 * rng.random(10),
                                numpy.linspace(0.99, 0.9, 4), 0.9 + 0.001 * rng.random(18)])
    if kwargs["mode"] == "max":
        metric = -metric
    opt, topt = _ours(), _torch_opt()
    ours = S.ReduceLROnPlateau(opt, **kwargs)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kwargs)
    got, want = [], []
    for m in metric:
        ours.step(m)
        topt.step()
        ref.step(m)
        got.append(opt.lr)
        want.append(topt.param_groups[0]["lr"])
        assert ours.get_last_lr() == opt.lr
    numpy.testing.assert_allclose(got, want, rtol=1e-12)
    assert len(set(got)) >= 3, "the metric sequence must trigger at least two reductions"


def test_reduce_on_plateau_hand_sequence_and_device_metric():
    opt = _ours(lr=1.0)
    sched = S.ReduceLROnPlateau(opt, factor=0.5, patience=2, min_lr=0.2)
    lrs = []
    for m in [5, 4, 4, 4, 4, 4, 4, 4, 4, 4]:
        sched.step(numpy.asarray(float(m)))  # 0-d arrays accepted
        lrs.append(opt.lr)
    assert lrs == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]
    for _ in range(3):
        sched.step(4.0)
    assert opt.lr == 0.2  # clamped at min_lr


@pytest.mark.parametrize("make", [
    lambda o: S.StepLR(o, 4, 0.5),
    lambda o: S.CosineAnnealingLR(o, 20, 1e-4, warmup_steps=3),
    lambda o: S.OneCycleLR(o, 0.4, 40),
    lambda o: S.ReduceLROnPlateau(o, patience=1),
], ids=["step", "cosine", "onecycle", "plateau"])
def test_state_dict_round_trip(make):
    opt = _ours()
    sched = make(opt)
    metric = 1.0 + numpy.arange(100) % 3  # plateaus: several reductions
    plateau = isinstance(sched, S.ReduceLROnPlateau)

    def step(s, i):
        s.step(metric[i]) if plateau else s.step()

    for i in range(11):
        step(sched, i)
    sd = json.loads(json.dumps(sched.state_dict()))
    opt_sd = opt.state_dict()
    opt2 = _ours(lr=9.0)
    opt2.load_state_dict(opt_sd)
    sched2 = make(opt2)
    sched2.load_state_dict(sd)
    assert opt2.lr == opt.lr and sched2.get_last_lr() == sched.get_last_lr()
    for i in range(11, 26):
        step(sched, i)
        step(sched2, i)
        assert opt2.lr == opt.lr
    assert opt.lr != opt_sd["config"]["lr"]  # the schedule kept moving


def test_bad_arguments():
    opt = _ours()
    with pytest.raises(ValueError, match="step_size"):
        S.StepLR(opt, 0)
    with pytest.raises(ValueError, match="T_max"):
        S.CosineAnnealingLR(opt, 0)
    with pytest.raises(ValueError, match="anneal_strategy"):
        S.OneCycleLR(opt, 0.1, 10, anneal_strategy="exp")
    with pytest.raises(ValueError, match="total_steps"):
        S.OneCycleLR(opt, 0.1)
    with pytest.raises(ValueError, match="mode"):
        S.ReduceLROnPlateau(opt, mode="up")
    with pytest.raises(ValueError, match="from a StepLR"):
        S.CosineAnnealingLR(opt, 5).load_state_dict(S.StepLR(opt, 2).state_dict())
