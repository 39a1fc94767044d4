"""Learning-rate schedulers, matching ``torch.optim.lr_scheduler``.

A scheduler sets the lr of every parameter group of an optimizer
(``optimizer.param_groups[i]["lr"]``), each from that group's own initial lr,
as torch does: on construction a scheduler stores ``group["initial_lr"]``
(if the group has none yet) and uses those values as ``base_lrs``. So a
BatchNorm-bias group at 64x the lr stays at 64x under every schedule, and
several schedulers built on one optimizer (for :class:`SequentialLR`) share
the same base lrs. Construction sets the lrs of step 0; ``step()`` advances
one step and sets the next lrs.

The attribute ``per_batch`` tells the fit loop when to call ``step()``: after
every batch (True: OneCycleLR, PiecewiseLinear by default) or after every
epoch (False). :class:`LinearLR` and :class:`PiecewiseLinear` take it as an
argument. ReduceLROnPlateau is stepped with the monitored metric:
``step(metric)``.

``get_last_lr()`` returns the first group's current lr as a python float
(what ``optimizer.lr`` returns); ``get_last_lrs()`` returns one float per
group (torch's ``get_last_lr()`` list). ``get_lr_at(step)`` /
``get_lrs_at(step)`` give the closed-form schedule at any step. Steps
compute python floats on the host only, never touching device arrays.
``state_dict()`` is JSON-serialisable (python scalars and lists only).
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Sequence

from ..backend import to_numpy
from .base import Optimizer

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR", "OneCycleLR", "LinearLR",
           "SequentialLR", "PiecewiseLinear", "ReduceLROnPlateau", "SCHEDULERS"]


def _param_groups(optimizer: Any, who: str) -> list[dict]:
    groups = getattr(optimizer, "param_groups", None)
    if not groups:
        raise TypeError(f"{who}: expected an optimizer with parameter groups "
                        f"(param_groups), got {type(optimizer).__name__}")
    return groups


def _per_group(value: Any, count: int, who: str, what: str) -> list[float]:
    """A float for every group from a float or a list of ``count`` floats."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{who}: expected {count} values of {what} (one per parameter "
                             f"group), got {len(value)}")
        return [float(v) for v in value]
    return [float(value)] * count


class LRScheduler:
    """Base class of closed-form schedules: group i's lr is
    ``_group_lr(i, base_lrs[i], last_epoch)``.

    ``base_lrs``: each group's ``"initial_lr"`` (set from its lr when the
    first scheduler is created on the optimizer). ``base_lr`` is the first.
    """

    per_batch: bool = False

    def __init__(self, optimizer: Optimizer) -> None:
        groups = _param_groups(optimizer, type(self).__name__)
        self.optimizer = optimizer
        for group in groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs: list[float] = [float(g["initial_lr"]) for g in groups]
        self.last_epoch = 0
        self._last_lrs: list[float] = [float(g["lr"]) for g in groups]

    @property
    def base_lr(self) -> float:
        """The first group's base lr."""
        return self.base_lrs[0]

    def _start(self) -> None:
        """Call at the end of subclass __init__: set the lrs of step 0."""
        self._set(self.get_lrs_at(0))

    def _set(self, lrs: Sequence[float]) -> None:
        self._last_lrs = [float(lr) for lr in lrs]
        for group, lr in zip(self.optimizer.param_groups, self._last_lrs):
            group["lr"] = lr

    def _group_lr(self, index: int, base_lr: float, step: int) -> float:
        """Group ``index``'s lr after ``step`` steps, from its ``base_lr``."""
        raise NotImplementedError

    def get_lrs_at(self, step: int) -> list[float]:
        """Every group's learning rate after ``step`` calls of :meth:`step`."""
        return [self._group_lr(i, base, step) for i, base in enumerate(self.base_lrs)]

    def get_lr_at(self, step: int) -> float:
        """The first group's learning rate after ``step`` calls of :meth:`step`."""
        return self.get_lrs_at(step)[0]

    def step(self) -> None:
        """Advance one step (an epoch, or a batch when ``per_batch``) and set the lrs."""
        self.last_epoch += 1
        self._set(self.get_lrs_at(self.last_epoch))

    def get_last_lr(self) -> float:
        """The first group's lr set by the last :meth:`step` (or by construction)."""
        return self._last_lrs[0]

    def get_last_lrs(self) -> list[float]:
        """Every group's lr set by the last :meth:`step` (torch's ``get_last_lr()``)."""
        return list(self._last_lrs)

    def config(self) -> dict:
        """Constructor arguments other than the optimizer (JSON-serialisable)."""
        return {}

    def state_dict(self) -> dict:
        """``{"type", "config", "base_lrs", "last_epoch", "last_lrs"}`` plus the first
        group's ``"base_lr"`` / ``"last_lr"`` (the single-group layout, kept for readers
        of older states)."""
        return {"type": type(self).__name__, "config": self.config(),
                "base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch,
                "last_lrs": list(self._last_lrs),
                "base_lr": self.base_lrs[0], "last_lr": self._last_lrs[0]}

    def load_state_dict(self, state: dict) -> None:
        """Restore position and base lrs; sets the optimizer's lrs to the restored ones.

        Also reads the single-group layout of older versions (``base_lr`` and
        ``last_lr`` only), for an optimizer with one group.
        """
        name = type(self).__name__
        kind = state.get("type", name)
        if kind != name:
            raise ValueError(f"{name}.load_state_dict: state is from a {kind}")
        count = len(self.optimizer.param_groups)
        base_lrs = state.get("base_lrs")
        last_lrs = state.get("last_lrs")
        if base_lrs is None:
            if count != 1:
                raise ValueError(f"{name}.load_state_dict: a single-group state cannot "
                                 f"restore {count} parameter groups")
            base_lrs = [state["base_lr"]]
            last_lrs = [state["last_lr"]] if "last_lr" in state else None
        if len(base_lrs) != count or (last_lrs is not None and len(last_lrs) != count):
            raise ValueError(f"{name}.load_state_dict: the state has {len(base_lrs)} parameter "
                             f"groups, the optimizer {count}")
        for key, value in state.get("config", {}).items():
            setattr(self, key, value)
        self.base_lrs = [float(b) for b in base_lrs]
        self.last_epoch = int(state["last_epoch"])
        self._set(last_lrs if last_lrs is not None else self.get_lrs_at(self.last_epoch))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (step // step_size)`` per group (per epoch)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        super().__init__(optimizer)
        if int(step_size) < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        self._start()

    def config(self) -> dict:
        return {"step_size": self.step_size, "gamma": self.gamma}

    def _group_lr(self, index: int, base_lr: float, step: int) -> float:
        return base_lr * self.gamma ** (step // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing with optional linear warmup (per epoch), per group.

    With ``w = warmup_steps`` and ``s = warmup_start_factor``:

    - ``step < w``: ``base_lr * (s + (1 - s) * step / w)`` (linear warmup);
    - ``step >= w``: ``eta_min + (base_lr - eta_min) * (1 + cos(pi * (step - w) / T_max)) / 2``.

    ``T_max`` is the length of the cosine phase (the whole schedule reaches
    ``eta_min`` after ``w + T_max`` steps; past that the cosine continues
    periodically, like torch). ``eta_min`` is shared by all groups (torch).
    With ``w = 0`` this is torch's ``CosineAnnealingLR(opt, T_max, eta_min)``;
    with ``w > 0`` it is ``SequentialLR(opt, [LinearLR(opt, s, 1.0,
    total_iters=w), CosineAnnealingLR(opt, T_max, eta_min)], milestones=[w])``.
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0,
                 warmup_steps: int = 0, warmup_start_factor: float = 0.1) -> None:
        super().__init__(optimizer)
        if int(T_max) < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be >= 1, got {T_max}")
        if int(warmup_steps) < 0:
            raise ValueError(f"CosineAnnealingLR: warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 < warmup_start_factor <= 1.0:
            raise ValueError("CosineAnnealingLR: warmup_start_factor must be in (0, 1], "
                             f"got {warmup_start_factor}")
        self.T_max = int(T_max)
        self.eta_min = float(eta_min)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_factor = float(warmup_start_factor)
        self._start()

    def config(self) -> dict:
        return {"T_max": self.T_max, "eta_min": self.eta_min,
                "warmup_steps": self.warmup_steps,
                "warmup_start_factor": self.warmup_start_factor}

    def _group_lr(self, index: int, base_lr: float, step: int) -> float:
        w = self.warmup_steps
        if step < w:
            s = self.warmup_start_factor
            return base_lr * (s + (1.0 - s) * step / w)
        t = step - w
        return self.eta_min + (base_lr - self.eta_min) * \
            (1.0 + math.cos(math.pi * t / self.T_max)) / 2.0


class OneCycleLR(LRScheduler):
    """One-cycle policy (per batch), like torch's ``OneCycleLR(cycle_momentum=False)``.

    Each group's lr rises from ``max_lr / div_factor`` to ``max_lr`` over the
    first ``pct_start * total_steps - 1`` steps, then anneals to
    ``max_lr / div_factor / final_div_factor`` at step ``total_steps - 1``
    (``anneal_strategy``: ``'cos'`` or ``'linear'``). ``max_lr``: one float
    for every group, or a list with one per group (torch). Give
    ``total_steps``, or ``epochs`` and ``steps_per_epoch``. Overrides the
    optimizer's lrs and sets each group's ``initial_lr`` to
    ``max_lr / div_factor`` (torch). Stepping more than ``total_steps`` times
    raises ValueError.
    """

    per_batch = True

    def __init__(self, optimizer: Optimizer, max_lr: "float | Sequence[float]",
                 total_steps: int | None = None, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", div_factor: float = 25.0,
                 final_div_factor: float = 1e4, epochs: int | None = None,
                 steps_per_epoch: int | None = None) -> None:
        super().__init__(optimizer)
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("OneCycleLR: give total_steps, or epochs and steps_per_epoch")
            total_steps = int(epochs) * int(steps_per_epoch)
        if int(total_steps) < 1:
            raise ValueError(f"OneCycleLR: total_steps must be >= 1, got {total_steps}")
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"OneCycleLR: pct_start must be in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', "
                             f"got {anneal_strategy!r}")
        max_lrs = _per_group(max_lr, len(self.base_lrs), "OneCycleLR", "max_lr")
        self.max_lr = list(max_lrs) if isinstance(max_lr, (list, tuple)) else float(max_lr)
        self.total_steps = int(total_steps)
        self.pct_start = float(pct_start)
        self.anneal_strategy = anneal_strategy
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)
        self.base_lrs = [m / self.div_factor for m in max_lrs]
        for group, base in zip(optimizer.param_groups, self.base_lrs):
            group["initial_lr"] = base
        self._start()

    def config(self) -> dict:
        return {"max_lr": self.max_lr, "total_steps": self.total_steps,
                "pct_start": self.pct_start, "anneal_strategy": self.anneal_strategy,
                "div_factor": self.div_factor, "final_div_factor": self.final_div_factor}

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _group_lr(self, index: int, base_lr: float, step: int) -> float:
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {step} times; the specified number "
                             f"of total steps is {self.total_steps}")
        max_lr = _per_group(self.max_lr, len(self.base_lrs), "OneCycleLR", "max_lr")[index]
        initial = max_lr / self.div_factor
        final = initial / self.final_div_factor
        phases = ((float(self.pct_start * self.total_steps) - 1, initial, max_lr),
                  (float(self.total_steps - 1), max_lr, final))
        start_step = 0.0
        for i, (end_step, start_lr, end_lr) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                span = end_step - start_step
                pct = (step - start_step) / span if span else 0.0
                return self._anneal(start_lr, end_lr, pct)
            start_step = end_step
        raise AssertionError("unreachable")


class LinearLR(LRScheduler):
    """Linear change of a multiplicative factor, like ``torch.optim.lr_scheduler.LinearLR``.

    ``lr = base_lr * (start_factor + (end_factor - start_factor) * min(step, total_iters)
    / total_iters)`` per group: from ``start_factor`` at step 0 to ``end_factor``
    at ``total_iters``, constant after. torch's closed form (torch requires
    ``0 < start_factor <= 1`` and ``0 <= end_factor <= 1``; here any factors
    >= 0 are allowed, nothing divides by them). ``per_batch``: step after every
    batch (True) or every epoch (False, the default). Combine with
    :class:`SequentialLR` for warmup-then-decay, or use :class:`PiecewiseLinear`.
    """

    def __init__(self, optimizer: Optimizer, start_factor: float = 1.0 / 3,
                 end_factor: float = 1.0, total_iters: int = 5, per_batch: bool = False) -> None:
        super().__init__(optimizer)
        if start_factor < 0 or end_factor < 0:
            raise ValueError(f"LinearLR: factors must be >= 0, got start_factor={start_factor}, "
                             f"end_factor={end_factor}")
        if int(total_iters) < 1:
            raise ValueError(f"LinearLR: total_iters must be >= 1, got {total_iters}")
        self.start_factor = float(start_factor)
        self.end_factor = float(end_factor)
        self.total_iters = int(total_iters)
        self.per_batch = bool(per_batch)
        self._start()

    def config(self) -> dict:
        return {"start_factor": self.start_factor, "end_factor": self.end_factor,
                "total_iters": self.total_iters, "per_batch": self.per_batch}

    def _group_lr(self, index: int, base_lr: float, step: int) -> float:
        done = min(step, self.total_iters) / self.total_iters
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor) * done)


class SequentialLR(LRScheduler):
    """Closed-form schedulers one after another, like ``torch.optim.lr_scheduler.SequentialLR``.

    ``schedulers[0]`` runs until step ``milestones[0]``; there
    ``schedulers[1]`` starts from its own step 0, and so on: at step t the lrs
    are ``schedulers[k].get_lrs_at(t - milestones[k - 1])`` with
    ``k = bisect_right(milestones, t)``. All schedulers must be built on this
    optimizer (they share its groups' ``initial_lr``, so building each one
    does not disturb the next) and agree on ``per_batch``. ReduceLROnPlateau
    cannot be part of a sequence. Warmup then linear decay::

        SequentialLR(opt, [LinearLR(opt, 0.2, 1.0, total_iters=w, per_batch=True),
                           LinearLR(opt, 1.0, 0.07, total_iters=T - w, per_batch=True)],
                     milestones=[w])
    """

    def __init__(self, optimizer: Optimizer, schedulers: Sequence[LRScheduler],
                 milestones: Sequence[int]) -> None:
        super().__init__(optimizer)
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError("SequentialLR: give at least one scheduler")
        for s in schedulers:
            if not isinstance(s, LRScheduler):
                raise TypeError(f"SequentialLR: expected closed-form schedulers (LRScheduler), "
                                f"got {type(s).__name__}")
            if s.optimizer is not optimizer:
                raise ValueError("SequentialLR: every scheduler must be built on its optimizer")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR: expected {len(schedulers) - 1} milestones for "
                             f"{len(schedulers)} schedulers, got {len(milestones)}")
        milestones = [int(m) for m in milestones]
        if any(b <= a for a, b in zip([0] + milestones, milestones)):
            raise ValueError(f"SequentialLR: milestones must be positive and increasing, "
                             f"got {milestones}")
        if len({bool(s.per_batch) for s in schedulers}) != 1:
            raise ValueError("SequentialLR: the schedulers disagree on per_batch")
        self.schedulers = schedulers
        self.milestones = milestones
        self.per_batch = bool(schedulers[0].per_batch)
        self._start()

    def config(self) -> dict:
        return {"milestones": list(self.milestones)}

    def _locate(self, step: int) -> tuple[int, int]:
        k = bisect.bisect_right(self.milestones, step)
        return k, step - (self.milestones[k - 1] if k else 0)

    def get_lrs_at(self, step: int) -> list[float]:
        k, local = self._locate(step)
        return self.schedulers[k].get_lrs_at(local)

    def _set(self, lrs: Sequence[float]) -> None:
        super()._set(lrs)
        k, local = self._locate(self.last_epoch)  # keep the active child's position in step
        child = self.schedulers[k]
        child.last_epoch, child._last_lrs = local, list(self._last_lrs)

    def state_dict(self) -> dict:
        return {**super().state_dict(),
                "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("schedulers", [])
        if len(saved) != len(self.schedulers):
            raise ValueError(f"SequentialLR.load_state_dict: the state has {len(saved)} "
                             f"schedulers, this sequence {len(self.schedulers)}")
        for child, child_state in zip(self.schedulers, saved):
            child.load_state_dict(child_state)
        super().load_state_dict(state)


class PiecewiseLinear(LRScheduler):
    """Piecewise-linear lr factor through ``(milestones[j], factors[j])`` (per batch).

    Each group's lr is its base lr times the factor, linearly interpolated
    between the points; before the first milestone the factor is
    ``factors[0]``, after the last ``factors[-1]`` (``numpy.interp``).
    Milestones are step counts (floats allowed) and must increase strictly.

    airbench94's schedule over ``T`` steps (warmup from 0.2 to 1 over the
    first 23 %, then linear decay to 0.07)::

        PiecewiseLinear(opt, milestones=[0, int(0.23 * T), T], factors=[0.2, 1.0, 0.07])

    (airbench's ``triangle(T, start=0.2, end=0.07, peak=0.23)`` truncates the
    peak to ``int(0.23 * T)``; pass it the same way to reproduce it.) This is
    ``SequentialLR([LinearLR(0.2, 1.0, w), LinearLR(1.0, 0.07, T - w)], [w])``
    for integer milestones, in one object.

    Args:
        optimizer: the optimizer whose groups' lrs are scheduled.
        milestones: increasing step numbers (>= 0), at least one.
        factors: the lr factors at the milestones (>= 0), one per milestone.
        per_batch: step after every batch (True, the default) or every epoch.
    """

    def __init__(self, optimizer: Optimizer, milestones: Sequence[float],
                 factors: Sequence[float], per_batch: bool = True) -> None:
        super().__init__(optimizer)
        milestones = [float(m) for m in milestones]
        factors = [float(f) for f in factors]
        if not milestones or len(milestones) != len(factors):
            raise ValueError(f"PiecewiseLinear: need as many factors as milestones (at least "
                             f"one), got {len(milestones)} milestones, {len(factors)} factors")
        if milestones[0] < 0 or any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"PiecewiseLinear: milestones must be >= 0 and strictly "
                             f"increasing, got {milestones}")
        if any(f < 0 for f in factors):
            raise ValueError(f"PiecewiseLinear: factors must be >= 0, got {factors}")
        self.milestones = milestones
        self.factors = factors
        self.per_batch = bool(per_batch)
        self._start()

    def config(self) -> dict:
        return {"milestones": list(self.milestones), "factors": list(self.factors),
                "per_batch": self.per_batch}

    def factor_at(self, step: float) -> float:
        """The lr factor after ``step`` steps."""
        m, f = self.milestones, self.factors
        if step <= m[0]:
            return f[0]
        if step >= m[-1]:
            return f[-1]
        j = bisect.bisect_right(m, step)
        t = (step - m[j - 1]) / (m[j] - m[j - 1])
        return f[j - 1] + (f[j] - f[j - 1]) * t

    def _group_lr(self, index: int, base_lr: float, step: int) -> float:
        return base_lr * self.factor_at(step)


class ReduceLROnPlateau:
    """Multiply every group's lr by ``factor`` when a metric stops improving (per epoch).

    ``step(metric)`` after each epoch (metric: python float or 0-d array;
    this is the only place a host sync is allowed). ``mode='min'``: better
    means lower by more than ``threshold`` (relative by default,
    ``threshold_mode='abs'`` for absolute); after more than ``patience`` bad
    epochs each group's lr becomes ``max(lr * factor, min_lr)`` (skipped when
    the change is below ``eps``) and ``cooldown`` epochs are ignored.
    ``min_lr``: one float, or a list with one per group. Same semantics as
    torch's ReduceLROnPlateau.
    """

    per_batch: bool = False

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.5,
                 patience: int = 3, min_lr: "float | Sequence[float]" = 1e-6,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 eps: float = 1e-8) -> None:
        groups = _param_groups(optimizer, "ReduceLROnPlateau")
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError("ReduceLROnPlateau: threshold_mode must be 'rel' or 'abs', "
                             f"got {threshold_mode!r}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor}")
        min_lrs = _per_group(min_lr, len(groups), "ReduceLROnPlateau", "min_lr")
        self.optimizer = optimizer
        self.mode = mode
        self.factor = float(factor)
        self.patience = int(patience)
        self.min_lr = list(min_lrs) if isinstance(min_lr, (list, tuple)) else float(min_lr)
        self.threshold = float(threshold)
        self.threshold_mode = threshold_mode
        self.cooldown = int(cooldown)
        self.eps = float(eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        self._last_lrs = [float(g["lr"]) for g in groups]

    def config(self) -> dict:
        return {"mode": self.mode, "factor": self.factor, "patience": self.patience,
                "min_lr": self.min_lr, "threshold": self.threshold,
                "threshold_mode": self.threshold_mode, "cooldown": self.cooldown,
                "eps": self.eps}

    def is_better(self, value: float, best: float) -> bool:
        if self.mode == "min":
            bound = best * (1.0 - self.threshold) if self.threshold_mode == "rel" \
                else best - self.threshold
            return value < bound
        bound = best * (1.0 + self.threshold) if self.threshold_mode == "rel" \
            else best + self.threshold
        return value > bound

    def step(self, metric: Any) -> None:
        """Record one epoch's ``metric`` and reduce the lrs if it plateaued."""
        current = float(to_numpy(metric)) if hasattr(metric, "shape") else float(metric)
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        groups = self.optimizer.param_groups
        if self.num_bad_epochs > self.patience:
            min_lrs = _per_group(self.min_lr, len(groups), "ReduceLROnPlateau", "min_lr")
            for group, min_lr in zip(groups, min_lrs):
                old = float(group["lr"])
                new = max(old * self.factor, min_lr)
                if old - new > self.eps:
                    group["lr"] = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lrs = [float(g["lr"]) for g in groups]

    def get_last_lr(self) -> float:
        """The first group's lr after the last :meth:`step`."""
        return self._last_lrs[0]

    def get_last_lrs(self) -> list[float]:
        """Every group's lr after the last :meth:`step`."""
        return list(self._last_lrs)

    def state_dict(self) -> dict:
        return {"type": "ReduceLROnPlateau", "config": self.config(), "best": self.best,
                "num_bad_epochs": self.num_bad_epochs, "cooldown_counter": self.cooldown_counter,
                "last_epoch": self.last_epoch, "last_lrs": list(self._last_lrs),
                "last_lr": self._last_lrs[0]}

    def load_state_dict(self, state: dict) -> None:
        """Restore counters and best value (the lrs themselves are restored with the optimizer)."""
        if state.get("type", "ReduceLROnPlateau") != "ReduceLROnPlateau":
            raise ValueError(f"ReduceLROnPlateau.load_state_dict: state is from a {state['type']}")
        for key, value in state.get("config", {}).items():
            setattr(self, key, value)
        self.best = float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.last_epoch = int(state["last_epoch"])
        last = state.get("last_lrs")
        if last is None:
            last = [state["last_lr"]] if "last_lr" in state else None
        groups = self.optimizer.param_groups
        if last is None or len(last) != len(groups):
            last = [g["lr"] for g in groups]
        self._last_lrs = [float(v) for v in last]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"ReduceLROnPlateau({args})"


SCHEDULERS = {cls.__name__: cls for cls in (StepLR, CosineAnnealingLR, OneCycleLR, LinearLR,
                                            SequentialLR, PiecewiseLinear, ReduceLROnPlateau)}
