"""Running loss/accuracy of an epoch, kept on the device and read only at sync points.

A training step adds its 0-d loss array and its 0-d correct-count array to
:class:`EpochStats` *without reading them*: nothing leaves the device and no
extra kernel runs for the loss. :meth:`EpochStats.sync` (called at progress
bar refreshes and at the end of an epoch) stacks the pending values, copies
them to the host in one transfer each and updates float64 host totals. That
is also where non-finite losses are found, together with the 1-based index of
the first bad step.

The host totals are added step by step in float64, in step order, whatever
the grouping of the syncs: the loss of an epoch is then the same bits
whether the running values were read every 0.5 s, once at the end, or at a
mid-epoch checkpoint (:meth:`EpochStats.state_dict` carries the totals into
checkpoints, so a resumed epoch logs the loss an uninterrupted one logs).

Trade-off: with ``nan_policy='raise'`` a NaN/Inf loss is detected at the next
sync point, so the optimizer updates between the bad step and that point have
already been applied (the weights are then typically non-finite too); the
error still names the first bad epoch/step. Detecting it *before* the update
needs the value on the host every step, a sync per step: that is what
``nan_policy='skip'`` does (see :func:`gpuconv.training.loop.fit`).
"""
from __future__ import annotations

import math
from typing import Any

import numpy

from ..backend import Array, device_context_of, get_array_module, on_array_device, to_numpy

__all__ = ["EpochStats", "correct_count"]


@on_array_device
def correct_count(pred: Array, y: Array) -> Array | None:
    """Number of correct predictions as a 0-d device integer array, or None.

    ``pred`` (N, K) scores with K > 1; ``y`` either (N,) integer class labels or
    (N, K) one-hot/probability targets (argmax is the class). Other shapes
    (single-output or regression models) have no accuracy: None.
    """
    if getattr(pred, "ndim", 0) != 2 or pred.shape[1] < 2:
        return None
    xp = get_array_module(pred, y)
    if y.ndim == 1 and y.dtype.kind in "iu":
        labels = y
    elif tuple(y.shape) == tuple(pred.shape):
        labels = xp.argmax(y, axis=1)
    else:
        return None
    return (xp.argmax(pred, axis=1) == labels).sum()


class EpochStats:
    """Deferred accumulation of per-step loss, correct counts and sample counts.

    ``add(loss, correct, n)``: ``loss`` a 0-d device array (mean loss of the
    batch), ``correct`` a 0-d device int array or None, ``n`` the batch size
    (host int). Means are sample-weighted: ``loss = sum(loss_i * n_i) /
    sum(n_i)``, ``accuracy = sum(correct_i) / sum(n_i)``.
    """

    def __init__(self) -> None:
        self._losses: list[Array] = []
        self._correct: list[Array] = []
        self._sizes: list[int] = []
        self._has_accuracy = True
        self._has_loss = True
        self.steps = 0          # steps added so far
        self.samples = 0        # samples added so far (host-known, no sync)
        self.loss_sum = 0.0     # float64 host totals over synced steps
        self.correct_sum = 0
        self.synced_samples = 0
        self.first_bad_step: int | None = None  # 1-based step of the first non-finite loss
        self.first_bad_value: float | None = None

    def add(self, loss: Array | None, correct: Array | None, n: int) -> None:
        if loss is None:
            self._has_loss = False
        else:
            self._losses.append(loss)
        if correct is None:
            self._has_accuracy = False
        else:
            self._correct.append(correct)
        self._sizes.append(int(n))
        self.steps += 1
        self.samples += int(n)

    def sync(self) -> None:
        """Read pending values to the host (one stacked transfer each); update totals."""
        if not self._sizes:
            return
        with device_context_of(*self._losses, *self._correct):
            self._sync()

    def _sync(self) -> None:
        sizes = numpy.asarray(self._sizes, dtype=numpy.float64)
        if self._has_loss and self._losses:
            xp = get_array_module(*self._losses)
            losses = to_numpy(xp.stack([xp.reshape(v, ()) for v in self._losses]))
            losses = losses.astype(numpy.float64)
            bad = ~numpy.isfinite(losses)
            if bad.any() and self.first_bad_step is None:
                i = int(numpy.argmax(bad))
                self.first_bad_step = self.steps - len(self._losses) + 1 + i
                self.first_bad_value = float(losses[i])
            total = self.loss_sum
            for value in (losses * sizes).tolist():  # in step order: grouping-independent
                total += value
            self.loss_sum = total
        if self._has_accuracy and self._correct:
            xp = get_array_module(*self._correct)
            self.correct_sum += int(to_numpy(xp.stack(self._correct)).sum())
        self.synced_samples += int(sizes.sum())
        self._losses.clear()
        self._correct.clear()
        self._sizes.clear()

    @property
    def loss(self) -> float | None:
        """Mean loss over synced samples (NaN before any, None without a loss);
        call :meth:`sync` first."""
        if not self._has_loss:
            return None
        return self.loss_sum / self.synced_samples if self.synced_samples else math.nan

    @property
    def accuracy(self) -> float | None:
        """Accuracy over synced samples, or None when the model has no accuracy."""
        if not self._has_accuracy:
            return None
        return self.correct_sum / self.synced_samples if self.synced_samples else math.nan

    def state_dict(self) -> dict[str, Any]:
        """The totals after a :meth:`sync` (JSON-able: ints, float64 sums, flags), for a
        mid-epoch checkpoint. Syncs first, so nothing is pending."""
        self.sync()
        return {"steps": self.steps, "samples": self.samples, "loss_sum": self.loss_sum,
                "correct_sum": self.correct_sum, "synced_samples": self.synced_samples,
                "has_loss": self._has_loss, "has_accuracy": self._has_accuracy}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s totals (the steps before a resume)."""
        self._losses.clear()
        self._correct.clear()
        self._sizes.clear()
        self.steps = int(state["steps"])
        self.samples = int(state["samples"])
        self.loss_sum = float(state["loss_sum"])
        self.correct_sum = int(state["correct_sum"])
        self.synced_samples = int(state["synced_samples"])
        self._has_loss = bool(state["has_loss"])
        self._has_accuracy = bool(state["has_accuracy"])

    def summary(self) -> dict[str, Any]:
        self.sync()
        return {"loss": self.loss, "accuracy": self.accuracy}
