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


# ---- parameter groups, LinearLR, SequentialLR, PiecewiseLinear ----------------------------

GROUP_LRS = (0.1, 6.4)  # e.g. airbench: BatchNorm biases at 64x


def _ours_groups(lrs=GROUP_LRS):
    params = [Parameter(numpy.zeros(3), "weight"), Parameter(numpy.zeros(2), "bias")]
    return optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)], momentum=0.9)


def _torch_groups(lrs=GROUP_LRS):
    return torch.optim.SGD([{"params": [torch.zeros(3, requires_grad=True)], "lr": lr}
                            for lr in lrs], momentum=0.9)


def _group_sequence(sched, opt, steps, metric=None):
    lrs = [[g["lr"] for g in opt.param_groups]]
    for i in range(steps):
        sched.step(metric[i]) if metric is not None else sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
        assert sched.get_last_lrs() == lrs[-1] and sched.get_last_lr() == opt.lr
    return numpy.array(lrs)


def _torch_group_sequence(sched, opt, steps, metric=None):
    lrs = [[g["lr"] for g in opt.param_groups]]
    for i in range(steps):
        opt.step()
        sched.step(metric[i]) if metric is not None else sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    return numpy.array(lrs)


TL = torch.optim.lr_scheduler
GROUP_CASES = {
    "step": (lambda o: S.StepLR(o, 3, 0.5), lambda t: TL.StepLR(t, 3, 0.5)),
    "cosine": (lambda o: S.CosineAnnealingLR(o, 20, 1e-3), lambda t: TL.CosineAnnealingLR(t, 20, 1e-3)),
    "cosine-warmup": (lambda o: S.CosineAnnealingLR(o, 25, 0.0, warmup_steps=5,
                                                    warmup_start_factor=0.2),
                      lambda t: TL.SequentialLR(t, [TL.LinearLR(t, 0.2, 1.0, total_iters=5),
                                                    TL.CosineAnnealingLR(t, 25, 0.0)], [5])),
    "onecycle-float": (lambda o: S.OneCycleLR(o, 0.5, 41),
                       lambda t: TL.OneCycleLR(t, 0.5, 41, cycle_momentum=False)),
    "onecycle-list": (lambda o: S.OneCycleLR(o, [0.5, 32.0], 41, anneal_strategy="linear"),
                      lambda t: TL.OneCycleLR(t, [0.5, 32.0], 41, anneal_strategy="linear",
                                              cycle_momentum=False)),
    "linear": (lambda o: S.LinearLR(o, 0.25, 1.0, total_iters=12),
               lambda t: TL.LinearLR(t, 0.25, 1.0, total_iters=12)),
    "linear-decay": (lambda o: S.LinearLR(o, 1.0, 0.07, total_iters=30),
                     lambda t: TL.LinearLR(t, 1.0, 0.07, total_iters=30)),
    "sequential": (lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.2, 1.0, total_iters=9),
                                                S.LinearLR(o, 1.0, 0.07, total_iters=31)], [9]),
                   lambda t: TL.SequentialLR(t, [TL.LinearLR(t, 0.2, 1.0, total_iters=9),
                                                 TL.LinearLR(t, 1.0, 0.07, total_iters=31)],
                                             [9])),
    "sequential-3": (lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.5, 1.0, total_iters=4),
                                                  S.StepLR(o, 5, 0.5),
                                                  S.CosineAnnealingLR(o, 10)], [4, 20]),
                     lambda t: TL.SequentialLR(t, [TL.LinearLR(t, 0.5, 1.0, total_iters=4),
                                                   TL.StepLR(t, 5, 0.5),
                                                   TL.CosineAnnealingLR(t, 10)], [4, 20])),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", sorted(GROUP_CASES))
def test_two_groups_each_scaled_from_its_own_lr_like_torch(case):
    ours_make, torch_make = GROUP_CASES[case]
    opt, topt = _ours_groups(), _torch_groups()
    ours = _group_sequence(ours_make(opt), opt, 40)
    ref = _torch_group_sequence(torch_make(topt), topt, 40)
    numpy.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-15)
    if not case.startswith(("onecycle", "cosine")):  # the groups keep their ratio (a
        live = ours[:, 0] > 0                           # shared eta_min aside)
        numpy.testing.assert_allclose(ours[live, 1] / ours[live, 0], 64.0, rtol=1e-9)


def test_reduce_on_plateau_reduces_every_group_like_torch():
    metric = numpy.concatenate([numpy.linspace(2.0, 1.0, 5), numpy.ones(25)])
    opt, topt = _ours_groups(), _torch_groups()
    kwargs = dict(factor=0.5, patience=1, min_lr=[0.02, 1.0])
    ours = _group_sequence(S.ReduceLROnPlateau(opt, **kwargs), opt, 30, metric)
    ref = _torch_group_sequence(TL.ReduceLROnPlateau(topt, **kwargs), topt, 30, metric)
    numpy.testing.assert_allclose(ours, ref, rtol=1e-12)
    assert ours[-1].tolist() == [0.02, 1.0]  # each group stopped at its own min_lr


def airbench_triangle(steps, start=0.2, end=0.07, peak=0.23):
    """airbench94.py's lr factor table, verbatim in torch (float32)."""
    xp = torch.tensor([0, int(peak * steps), steps])
    fp = torch.tensor([start, 1, end])
    x = torch.arange(1 + steps)
    m = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
    b = fp[:-1] - (m * xp[:-1])
    indices = torch.sum(torch.ge(x[:, None], xp[None, :]), 1) - 1
    indices = torch.clamp(indices, 0, len(m) - 1)
    return (m[indices] * x + b[indices]).numpy()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("total", [40, 97, 485])
def test_piecewise_linear_is_airbench_and_torch_warmup_then_decay(total):
    warm = int(0.23 * total)
    opt, topt = _ours_groups(), _torch_groups()
    sched = S.PiecewiseLinear(opt, milestones=[0, warm, total], factors=[0.2, 1.0, 0.07])
    assert sched.per_batch
    ours = _group_sequence(sched, opt, total + 5)  # past the end: constant 0.07
    tsched = TL.SequentialLR(topt, [TL.LinearLR(topt, 0.2, 1.0, total_iters=warm),
                                    TL.LinearLR(topt, 1.0, 0.07, total_iters=total - warm)],
                             milestones=[warm])
    ref = _torch_group_sequence(tsched, topt, total + 5)
    numpy.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-15)
    factors = ours[:, 0] / GROUP_LRS[0]
    # airbench computes its table in float32: equal to float32 rounding
    numpy.testing.assert_allclose(factors[:total + 1], airbench_triangle(total), rtol=1e-6,
                                  atol=1e-6)
    numpy.testing.assert_allclose(factors, numpy.interp(numpy.arange(total + 6),
                                                        [0, warm, total], [0.2, 1.0, 0.07]),
                                  rtol=1e-12)
    assert factors[-1] == pytest.approx(0.07) and factors[warm] == pytest.approx(1.0)
    # torch's LambdaLR over airbench's table (how airbench94 steps it) gives the same lrs
    topt2 = _torch_groups()
    table = numpy.interp(numpy.arange(total + 1), [0, warm, total], [0.2, 1.0, 0.07])
    ref2 = _torch_group_sequence(TL.LambdaLR(topt2, lambda i: table[i]), topt2, total)
    numpy.testing.assert_allclose(ours[:total + 1], ref2, rtol=1e-12)


def test_piecewise_linear_fractional_milestones_and_clamping():
    opt = _ours_groups()
    sched = S.PiecewiseLinear(opt, [2.5, 0.23 * 100, 100], [0.0, 1.0, 0.5])
    assert sched.factor_at(0) == 0.0 and sched.factor_at(2.5) == 0.0
    assert sched.factor_at(12.75) == pytest.approx(0.5) and sched.factor_at(23) == 1.0
    assert sched.factor_at(61.5) == pytest.approx(0.75)
    assert sched.factor_at(1000) == 0.5 and opt.lr == 0.0
    assert S.PiecewiseLinear(_ours_groups(), [0], [0.3]).get_lrs_at(50) == \
        pytest.approx([0.03, 1.92])
    assert not S.PiecewiseLinear(opt, [0, 10], [1, 0], per_batch=False).per_batch


def test_schedulers_share_initial_lrs_like_torch():
    opt = _ours_groups()
    first = S.LinearLR(opt, 0.2, 1.0, total_iters=5)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.2 * 6.4)
    second = S.LinearLR(opt, 1.0, 0.5, total_iters=5)  # from the initial lrs, not 0.2x them
    assert second.base_lrs == list(GROUP_LRS) and first.base_lrs == list(GROUP_LRS)
    assert all(g["initial_lr"] == lr for g, lr in zip(opt.param_groups, GROUP_LRS))
    seq = S.SequentialLR(opt, [first, second], milestones=[5])
    assert opt.lr == pytest.approx(0.02)  # the sequence restarts at the first one's step 0
    assert not seq.per_batch
    for _ in range(7):
        seq.step()
    assert second.last_epoch == 2 and second.get_last_lrs() == seq.get_last_lrs()


@pytest.mark.parametrize("make", [
    lambda o: S.LinearLR(o, 0.3, 1.0, total_iters=7, per_batch=True),
    lambda o: S.PiecewiseLinear(o, [0, 6, 30], [0.2, 1.0, 0.07]),
    lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.2, 1.0, 6), S.CosineAnnealingLR(o, 20)], [6]),
    lambda o: S.OneCycleLR(o, [0.4, 20.0], 40),
    lambda o: S.CosineAnnealingLR(o, 20, 1e-4, warmup_steps=3),
    lambda o: S.ReduceLROnPlateau(o, patience=1, min_lr=[1e-3, 1e-2]),
], ids=["linear", "piecewise", "sequential", "onecycle", "cosine", "plateau"])
def test_group_state_dict_round_trip(make):
    opt = _ours_groups()
    sched = make(opt)
    metric = 1.0 + numpy.arange(100) % 3
    plateau = isinstance(sched, S.ReduceLROnPlateau)

    def step(s, i):
        s.step(metric[i]) if plateau else s.step()

    for i in range(11):
        step(sched, i)
    sd = sched.state_dict()
    assert json.loads(json.dumps(sd)) == sd and len(sd["last_lrs"]) == 2
    opt_sd = opt.state_dict()
    opt2 = _ours_groups(lrs=(9.0, 9.0))
    opt2.load_state_dict(opt_sd)
    sched2 = make(opt2)
    sched2.load_state_dict(json.loads(json.dumps(sd)))
    assert sched2.get_last_lrs() == sched.get_last_lrs()
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    for i in range(11, 26):
        step(sched, i)
        step(sched2, i)
        assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]


def test_single_group_scheduler_state_of_the_old_layout_loads():
    opt = _ours()
    sched = S.StepLR(opt, 3, 0.5)
    for _ in range(7):
        sched.step()
    old = {k: v for k, v in sched.state_dict().items() if k not in ("base_lrs", "last_lrs")}
    opt2 = _ours()
    sched2 = S.StepLR(opt2, 3, 0.5)
    sched2.load_state_dict(old)
    assert opt2.lr == opt.lr == pytest.approx(0.025) and sched2.last_epoch == 7
    with pytest.raises(ValueError, match="single-group state"):
        S.StepLR(_ours_groups(), 3).load_state_dict(old)
    with pytest.raises(ValueError, match="2 parameter groups"):
        S.StepLR(opt2, 3).load_state_dict(S.StepLR(_ours_groups(), 3).state_dict())


def test_new_scheduler_bad_arguments():
    opt = _ours_groups()
    with pytest.raises(ValueError, match="total_iters"):
        S.LinearLR(opt, total_iters=0)
    with pytest.raises(ValueError, match="factors must be >= 0"):
        S.LinearLR(opt, -0.1)
    with pytest.raises(ValueError, match="strictly increasing"):
        S.PiecewiseLinear(opt, [0, 5, 5], [1, 1, 1])
    with pytest.raises(ValueError, match="as many factors"):
        S.PiecewiseLinear(opt, [0, 5], [1])
    with pytest.raises(ValueError, match="milestones"):
        S.SequentialLR(opt, [S.LinearLR(opt), S.LinearLR(opt)], [])
    with pytest.raises(ValueError, match="per_batch"):
        S.SequentialLR(opt, [S.LinearLR(opt), S.PiecewiseLinear(opt, [0], [1])], [3])
    with pytest.raises(TypeError, match="closed-form"):
        S.SequentialLR(opt, [S.LinearLR(opt), S.ReduceLROnPlateau(opt)], [3])
    with pytest.raises(ValueError, match="one per parameter group"):
        S.OneCycleLR(opt, [0.1, 0.2, 0.3], 10)
    with pytest.raises(TypeError, match="param_groups"):
        S.StepLR(object(), 3)
    assert set(S.SCHEDULERS) >= {"LinearLR", "SequentialLR", "PiecewiseLinear"}
