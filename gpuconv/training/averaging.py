"""Weight averaging callbacks: an exponential moving average of the weights (EMA),
and airbench's lookahead form of it that writes the average back into the model.

Both average every floating-point parameter *and* buffer (BatchNorm running
statistics), like ``torch.optim.swa_utils.AveragedModel(use_buffers=True)``
and airbench's ``LookaheadState`` (which lerps every float entry of the
model's ``state_dict``). Frozen parameters are averaged too (a constant stays
constant). Updates run on the device, with no host synchronisation; the
averages are part of the callback's ``state_dict`` and so of training
checkpoints.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

from ..backend import Array, device_context_of, device_of, get_array_module, to_device, to_numpy
from .callbacks import Callback

__all__ = ["EMA", "Lookahead", "airbench_decay"]


def airbench_decay(total_steps: int, base: float = 0.95, every: int = 5,
                   power: float = 3.0) -> Callable[[int], float]:
    """airbench94's lookahead decay at step ``t`` (1-based global step):
    ``base ** every * (t / total_steps) ** power`` -- small early (the average
    follows the weights), approaching ``base ** every`` at the end."""
    if total_steps < 1:
        raise ValueError(f"airbench_decay: total_steps must be >= 1, got {total_steps!r}")
    return lambda t: base ** every * (min(t, total_steps) / total_steps) ** power


class EMA(Callback):
    """``average = decay * average + (1 - decay) * weights`` every ``every`` optimizer steps.

    Args:
        decay: a float in [0, 1), or a function of the global step (1-based) -> decay.
        every: update period in optimizer steps.
        write_back: copy the average into the model after each update (the
            *lookahead* form: training continues from the average). Without it
            the model trains on its own weights and the average replaces them
            when training ends (``on_train_end``), as Keras's
            ``use_ema`` + overwrite does.

    The average starts as a copy of the weights when training begins (or is
    restored from a checkpoint). ``averages()`` yields ``(name, array)``.
    """

    def __init__(self, decay: "float | Callable[[int], float]" = 0.999, every: int = 1,
                 write_back: bool = False) -> None:
        if not callable(decay) and not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1) or a function of the step, "
                             f"got {decay!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"EMA: every must be a positive int, got {every!r}")
        self.decay, self.every, self.write_back = decay, every, bool(write_back)
        self.step = 0
        self._average: dict[str, Array] | None = None
        self._restored: dict[str, Any] | None = None

    # ---- what is averaged ----------------------------------------------------------
    def _targets(self) -> Iterator[tuple[str, Array, Any]]:
        """``(name, array, owner)`` of every float parameter (owner: the Parameter)
        and buffer (owner: None; buffers are written in place)."""
        for name, p in self.model.named_parameters():
            if p.data.dtype.kind == "f":
                yield f"param/{name}", p.data, p
        for name, b in self.model.named_buffers():
            if getattr(b, "dtype", None) is not None and b.dtype.kind == "f":
                yield f"buffer/{name}", b, None

    def averages(self) -> Iterator[tuple[str, Array]]:
        yield from (self._average or {}).items()

    def _decay_at(self, step: int) -> float:
        return float(self.decay(step)) if callable(self.decay) else float(self.decay)

    # ---- hooks ---------------------------------------------------------------------
    def on_train_begin(self, logs: dict | None = None) -> None:
        restored, self._restored = self._restored, None
        self._average = {}
        for name, array, _ in self._targets():
            xp = get_array_module(array)
            with device_context_of(array):
                if restored is not None and name in restored:
                    self._average[name] = to_device(restored[name], device_of(array)).astype(
                        array.dtype)
                else:
                    self._average[name] = xp.array(array, copy=True)

    def on_batch_end(self, step: int, logs: dict | None = None) -> None:
        self.step += 1
        if self.step % self.every == 0:
            self.update(self._decay_at(self.step))

    def update(self, decay: float) -> None:
        """One averaging step with ``decay`` (then write back in lookahead form)."""
        if self._average is None:
            raise RuntimeError("EMA.update before on_train_begin: use it as a fit callback")
        weight = 1.0 - decay
        for name, array, owner in self._targets():
            average = self._average[name]
            with device_context_of(array):
                average += (array - average) * weight
            if self.write_back:
                self._write(array, owner, average)

    @staticmethod
    def _write(array: Array, owner: Any, value: Array) -> None:
        with device_context_of(array):
            array[...] = value  # in place: layers and optimizers keep their references

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._average is None:
            return
        for name, array, owner in self._targets():
            self._write(array, owner, self._average[name])

    # ---- checkpoints ---------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step,
                "average": {k: to_numpy(v) for k, v in (self._average or {}).items()}}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state.get("step", 0))
        self._restored = dict(state.get("average") or {}) or None


class Lookahead(EMA):
    """airbench94's weight averaging: every ``every`` (5) steps the average moves
    towards the weights with ``decay = base ** every * (t / total_steps) ** power``
    and the weights are set to the average; at the end the weights are the
    average. ``total_steps``: the number of optimizer steps of the whole run."""

    def __init__(self, total_steps: int, every: int = 5, base: float = 0.95,
                 power: float = 3.0) -> None:
        super().__init__(airbench_decay(total_steps, base, every, power), every,
                         write_back=True)
        self.total_steps, self.base, self.power = int(total_steps), base, power
