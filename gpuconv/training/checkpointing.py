"""When ``fit`` writes checkpoints, and what it writes about the epoch in progress.

``fit(checkpoint_path=...)`` writes the training checkpoint (atomically,
always to the same file):

- after every epoch;
- every ``checkpoint_every`` (:class:`CheckpointEvery`: minutes or steps;
  default every 10 minutes), at a step boundary, so that a SIGKILL or a
  power cut loses at most that much training;
- on a stop request (Ctrl-C, SIGTERM in the CLI, a callback raising
  KeyboardInterrupt), at the next step boundary;
- when ``fit`` ends (status ``finished`` or ``stopped``).

A checkpoint written inside an epoch holds, besides everything an
end-of-epoch one holds, the *partial epoch* (:func:`partial_state`): the
steps done, the phase (``train`` or ``validate``), the learning rate the
epoch started with (the one its log shows), the running loss/accuracy
totals (:meth:`EpochStats.state_dict`), the skipped-batch counts and the
seconds spent. Resuming continues with the next batch, so on the CPU an
interrupted and resumed run is bit-identical to an uninterrupted one (see
:mod:`gpuconv.training.loop` for what is compared).
"""
from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["CheckpointEvery", "DEFAULT_CHECKPOINT_EVERY", "partial_state"]

DEFAULT_CHECKPOINT_EVERY = "10min"
"""The default period of mid-epoch checkpoints (when a ``checkpoint_path`` is given)."""

_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
          "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
          "h": 3600.0, "hour": 3600.0, "hours": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$")


@dataclass(frozen=True)
class CheckpointEvery:
    """A period of mid-epoch checkpoints: ``seconds`` of training or ``steps``
    (optimisation steps), or neither (only the epoch-end and stop checkpoints)."""

    seconds: float | None = None
    steps: int | None = None

    @classmethod
    def parse(cls, value: "str | int | _dt.timedelta | CheckpointEvery | None") -> "CheckpointEvery":
        """``"10min"``, ``"90s"``, ``"1.5h"``, ``"500steps"`` (or ``"500 steps"``), an
        int (steps), a ``datetime.timedelta``, or ``None`` / ``"off"`` / ``0`` (no
        periodic checkpoints). ValueError for anything else."""
        if value is None or isinstance(value, cls):
            return value or cls()
        if isinstance(value, _dt.timedelta):
            seconds = value.total_seconds()
            return cls(seconds=seconds) if seconds > 0 else cls()
        if isinstance(value, bool):
            raise ValueError(f"checkpoint_every: expected minutes or steps, got {value!r}")
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"checkpoint_every: steps must be >= 0, got {value}")
            return cls(steps=value) if value else cls()
        if not isinstance(value, str):
            raise ValueError(f"checkpoint_every: expected e.g. '10min', '500steps' or 'off', "
                             f"got {value!r}")
        text = value.strip().lower()
        if text in ("off", "none", "never", "0"):
            return cls()
        match = _PATTERN.match(text)
        if match is None:
            raise ValueError(f"checkpoint_every: cannot read {value!r}; write e.g. '10min', "
                             "'90s', '2h' or '500steps' ('off' disables)")
        number, unit = float(match.group(1)), match.group(2)
        if unit in ("step", "steps"):
            if number != int(number):
                raise ValueError(f"checkpoint_every: a whole number of steps, got {value!r}")
            return cls(steps=int(number)) if number else cls()
        if unit not in _UNITS:
            raise ValueError(f"checkpoint_every: unknown unit {unit!r} in {value!r}; use s, "
                             "min, h or steps")
        seconds = number * _UNITS[unit]
        if not math.isfinite(seconds):
            raise ValueError(f"checkpoint_every: {value!r} is not finite")
        return cls(seconds=seconds) if seconds > 0 else cls()

    @property
    def enabled(self) -> bool:
        return self.seconds is not None or self.steps is not None

    def due(self, seconds_since: float, steps_since: int) -> bool:
        """True when a periodic checkpoint is due after ``steps_since`` steps and
        ``seconds_since`` seconds since the last checkpoint."""
        if self.steps is not None and steps_since >= self.steps:
            return True
        return self.seconds is not None and seconds_since >= self.seconds

    def __str__(self) -> str:
        if self.steps is not None:
            return f"{self.steps}steps"
        if self.seconds is not None:
            minutes = self.seconds / 60
            return f"{minutes:g}min" if self.seconds >= 60 else f"{self.seconds:g}s"
        return "off"


def partial_state(epoch: int, step: int, phase: str, lr: float | None, elapsed: float,
                  stats: dict[str, Any], skipped: int, amp_skipped: int) -> dict[str, Any]:
    """The checkpoint's record of the epoch in progress (JSON-able): ``epoch`` (1-based),
    ``step`` (steps done, batches skipped by ``nan_policy='skip'`` included), ``phase``
    (``"train"`` or ``"validate"``), ``lr`` (at the epoch's start), ``elapsed`` (s),
    ``stats`` (:meth:`EpochStats.state_dict`), ``skipped``, ``amp_skipped``."""
    if phase not in ("train", "validate"):
        raise ValueError(f"partial_state: phase must be 'train' or 'validate', got {phase!r}")
    return {"epoch": int(epoch), "step": int(step), "phase": phase,
            "lr": None if lr is None else float(lr), "elapsed": float(elapsed),
            "stats": dict(stats), "skipped": int(skipped), "amp_skipped": int(amp_skipped)}
