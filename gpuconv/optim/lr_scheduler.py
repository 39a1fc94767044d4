"""Learning-rate schedulers, matching ``torch.optim.lr_scheduler``.

A scheduler sets ``optimizer.lr``. Construction sets the lr of step 0;
``step()`` advances one step and sets the next lr. The class attribute
``per_batch`` tells the fit loop when to call ``step()``: after every batch
(True, OneCycleLR) or after every epoch (False). ReduceLROnPlateau is stepped
with the monitored metric: ``step(metric)``.

``get_last_lr()`` returns the current lr as a python float (torch returns a
list with one entry per parameter group; gpuconv optimizers have one group).
``state_dict()`` is JSON-serialisable (python scalars only).
"""
from __future__ import annotations

import math
from typing import Any

from ..backend import to_numpy
from .base import Optimizer

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR", "OneCycleLR", "ReduceLROnPlateau",
           "SCHEDULERS"]


class LRScheduler:
    """Base class of closed-form schedules: ``lr = get_lr_at(last_epoch)``.

    ``base_lr`` is the optimizer's lr when the scheduler is created.
    """

    per_batch: bool = False

    def __init__(self, optimizer: Optimizer) -> None:
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"{type(self).__name__}: expected an optimizer with an lr, "
                            f"got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0
        self._last_lr = self.base_lr

    def _start(self) -> None:
        """Call at the end of subclass __init__: set the lr of step 0."""
        self._set(self.get_lr_at(0))

    def _set(self, lr: float) -> None:
        self._last_lr = float(lr)
        self.optimizer.lr = self._last_lr

    def get_lr_at(self, step: int) -> float:
        """The learning rate after ``step`` calls of :meth:`step`."""
        raise NotImplementedError

    def step(self) -> None:
        """Advance one step (an epoch, or a batch when ``per_batch``) and set the lr."""
        self.last_epoch += 1
        self._set(self.get_lr_at(self.last_epoch))

    def get_last_lr(self) -> float:
        """The lr set by the last :meth:`step` (or by construction)."""
        return self._last_lr

    def config(self) -> dict:
        """Constructor arguments other than the optimizer (JSON-serialisable)."""
        return {}

    def state_dict(self) -> dict:
        return {"type": type(self).__name__, "config": self.config(),
                "base_lr": self.base_lr, "last_epoch": self.last_epoch,
                "last_lr": self._last_lr}

    def load_state_dict(self, state: dict) -> None:
        """Restore position and base lr; sets the optimizer's lr to the restored one."""
        kind = state.get("type", type(self).__name__)
        if kind != type(self).__name__:
            raise ValueError(f"{type(self).__name__}.load_state_dict: state is from a {kind}")
        for key, value in state.get("config", {}).items():
            setattr(self, key, value)
        self.base_lr = float(state["base_lr"])
        self.last_epoch = int(state["last_epoch"])
        self._set(state.get("last_lr", self.get_lr_at(self.last_epoch)))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (step // step_size)`` (per epoch)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        super().__init__(optimizer)
        if int(step_size) < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        self._start()

    def config(self) -> dict:
        return {"step_size": self.step_size, "gamma": self.gamma}

    def get_lr_at(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing with optional linear warmup (per epoch).

    With ``w = warmup_steps`` and ``s = warmup_start_factor``:

    - ``step < w``: ``base_lr * (s + (1 - s) * step / w)`` (linear warmup);
    - ``step >= w``: ``eta_min + (base_lr - eta_min) * (1 + cos(pi * (step - w) / T_max)) / 2``.

    ``T_max`` is the length of the cosine phase (the whole schedule reaches
    ``eta_min`` after ``w + T_max`` steps; past that the cosine continues
    periodically, like torch). With ``w = 0`` this is torch's
    ``CosineAnnealingLR(opt, T_max, eta_min)``; with ``w > 0`` it is
    ``SequentialLR(opt, [LinearLR(opt, s, 1.0, total_iters=w),
    CosineAnnealingLR(opt, T_max, eta_min)], milestones=[w])``.
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

    def get_lr_at(self, step: int) -> float:
        w = self.warmup_steps
        if step < w:
            s = self.warmup_start_factor
            return self.base_lr * (s + (1.0 - s) * step / w)
        t = step - w
        return self.eta_min + (self.base_lr - self.eta_min) * \
            (1.0 + math.cos(math.pi * t / self.T_max)) / 2.0


class OneCycleLR(LRScheduler):
    """One-cycle policy (per batch), like torch's ``OneCycleLR(cycle_momentum=False)``.

    The lr rises from ``max_lr / div_factor`` to ``max_lr`` over the first
    ``pct_start * total_steps - 1`` steps, then anneals to
    ``max_lr / div_factor / final_div_factor`` at step ``total_steps - 1``
    (``anneal_strategy``: ``'cos'`` or ``'linear'``). Give ``total_steps``,
    or ``epochs`` and ``steps_per_epoch``. Overrides the optimizer's lr.
    Stepping more than ``total_steps`` times raises ValueError.
    """

    per_batch = True

    def __init__(self, optimizer: Optimizer, max_lr: float, total_steps: int | None = None,
                 pct_start: float = 0.3, anneal_strategy: str = "cos", div_factor: float = 25.0,
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
        self.max_lr = float(max_lr)
        self.total_steps = int(total_steps)
        self.pct_start = float(pct_start)
        self.anneal_strategy = anneal_strategy
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)
        self.base_lr = self.max_lr / self.div_factor
        self._start()

    def config(self) -> dict:
        return {"max_lr": self.max_lr, "total_steps": self.total_steps,
                "pct_start": self.pct_start, "anneal_strategy": self.anneal_strategy,
                "div_factor": self.div_factor, "final_div_factor": self.final_div_factor}

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr_at(self, step: int) -> float:
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {step} times; the specified number "
                             f"of total steps is {self.total_steps}")
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        phases = ((float(self.pct_start * self.total_steps) - 1, initial, self.max_lr),
                  (float(self.total_steps - 1), self.max_lr, final))
        start_step = 0.0
        for i, (end_step, start_lr, end_lr) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                span = end_step - start_step
                pct = (step - start_step) / span if span else 0.0
                return self._anneal(start_lr, end_lr, pct)
            start_step = end_step
        raise AssertionError("unreachable")


class ReduceLROnPlateau:
    """Multiply the lr by ``factor`` when a metric stops improving (per epoch).

    ``step(metric)`` after each epoch (metric: python float or 0-d array;
    this is the only place a host sync is allowed). ``mode='min'``: better
    means lower by more than ``threshold`` (relative by default,
    ``threshold_mode='abs'`` for absolute); after more than ``patience`` bad
    epochs the lr becomes ``max(lr * factor, min_lr)`` (skipped when the
    change is below ``eps``) and ``cooldown`` epochs are ignored. Same
    semantics as torch's ReduceLROnPlateau.
    """

    per_batch: bool = False

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.5,
                 patience: int = 3, min_lr: float = 1e-6, threshold: float = 1e-4,
                 threshold_mode: str = "rel", cooldown: int = 0, eps: float = 1e-8) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError("ReduceLROnPlateau: threshold_mode must be 'rel' or 'abs', "
                             f"got {threshold_mode!r}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor}")
        self.optimizer = optimizer
        self.mode = mode
        self.factor = float(factor)
        self.patience = int(patience)
        self.min_lr = float(min_lr)
        self.threshold = float(threshold)
        self.threshold_mode = threshold_mode
        self.cooldown = int(cooldown)
        self.eps = float(eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        self._last_lr = float(optimizer.lr)

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
        """Record one epoch's ``metric`` and reduce the lr if it plateaued."""
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
        if self.num_bad_epochs > self.patience:
            old = float(self.optimizer.lr)
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.optimizer.lr = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = float(self.optimizer.lr)

    def get_last_lr(self) -> float:
        return self._last_lr

    def state_dict(self) -> dict:
        return {"type": "ReduceLROnPlateau", "config": self.config(), "best": self.best,
                "num_bad_epochs": self.num_bad_epochs, "cooldown_counter": self.cooldown_counter,
                "last_epoch": self.last_epoch, "last_lr": self._last_lr}

    def load_state_dict(self, state: dict) -> None:
        """Restore counters and best value (the lr itself is restored with the optimizer)."""
        if state.get("type", "ReduceLROnPlateau") != "ReduceLROnPlateau":
            raise ValueError(f"ReduceLROnPlateau.load_state_dict: state is from a {state['type']}")
        for key, value in state.get("config", {}).items():
            setattr(self, key, value)
        self.best = float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.last_epoch = int(state["last_epoch"])
        self._last_lr = float(state.get("last_lr", self.optimizer.lr))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"ReduceLROnPlateau({args})"


SCHEDULERS = {cls.__name__: cls for cls in (StepLR, CosineAnnealingLR, OneCycleLR,
                                            ReduceLROnPlateau)}
