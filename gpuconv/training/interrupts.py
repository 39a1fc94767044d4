"""Stop requests: Ctrl-C (and, for the CLI, SIGTERM) end ``fit`` at the next step boundary.

A KeyboardInterrupt raised wherever the main thread happens to be (in the
middle of an optimizer update, after BatchNorm has already absorbed the next
batch, after the augmentation of the next batch drew its random numbers)
leaves a state that no checkpoint can describe exactly. So while ``fit``
runs in the main thread, :class:`StopRequests` replaces the SIGINT handler
with one that only *records* the request; the loop looks at it after every
optimisation step and between validation batches, writes the checkpoint of
that exact position and raises :class:`TrainingInterrupted` (a
KeyboardInterrupt, so ``except KeyboardInterrupt`` code keeps working).

A second signal before that boundary is reached raises KeyboardInterrupt at
once (the way out of a step that takes too long); nothing is saved then and
the last periodic/epoch checkpoint stays the latest.

Other signals join through :func:`forward_to_sigint`, which is what
``gpuconv train`` does for SIGTERM: a stop request while ``StopRequests`` is
active -- also where SIGINT is ignored (a job started in the background or
under ``nohup``, where SIGTERM is the only way to stop it gracefully) -- and
otherwise whatever SIGINT does.
Outside the main thread signal handlers cannot be installed; there, only
callbacks can ask for a stop (by raising KeyboardInterrupt in
``on_batch_end``/``on_epoch_end``, see :mod:`gpuconv.training.callbacks`).
"""
from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Callable

__all__ = ["TrainingInterrupted", "StopRequests", "forward_to_sigint"]

_active: "StopRequests | None" = None  # the innermost active StopRequests (main thread)


class TrainingInterrupted(KeyboardInterrupt):
    """``fit`` stopped on request (Ctrl-C, SIGTERM, a callback) or by a hard interrupt.

    ``epoch``: the epoch in progress (1-based); ``step``: its optimisation steps
    completed (0 at an epoch boundary; the epoch's batch count when stopped
    during validation); ``phase``: ``"train"``, ``"validate"`` or ``"epoch end"``;
    ``reason``: ``"SIGINT"``, ``"SIGTERM"``, ``"callback"`` or ``"hard"``
    (a second signal, or a KeyboardInterrupt not at a step boundary);
    ``checkpoint``: the path written, or None (no ``checkpoint_path``, or a hard
    interrupt: then the last periodic/epoch checkpoint, if any, is the latest).
    """

    def __init__(self, epoch: int, step: int, phase: str, reason: str,
                 checkpoint: str | None) -> None:
        where = f"epoch {epoch}, step {step}" + (" (validation)" if phase == "validate" else "")
        super().__init__(f"training interrupted ({reason}) at {where}"
                         + (f"; checkpoint saved to {checkpoint}" if checkpoint else ""))
        self.epoch, self.step, self.phase = epoch, step, phase
        self.reason, self.checkpoint = reason, checkpoint

    @property
    def saved(self) -> bool:
        return self.checkpoint is not None


class StopRequests:
    """Context manager: while active, SIGINT records a stop request instead of raising.

    ``requested``: None, or why a stop was asked for (``"SIGINT"``,
    ``"SIGTERM"``, ``"callback"``). ``notify``: called with a one-line message
    when a signal arrives (fit passes a stderr printer when verbose). In a
    thread other than the main one (where Python cannot install handlers), or
    when SIGINT is ignored (``SIG_IGN``), nothing is installed.
    """

    def __init__(self, notify: Callable[[str], None] | None = None) -> None:
        self.requested: str | None = None
        self.notify = notify
        self._previous = None
        self._installed = False
        self._outer: "StopRequests | None" = None

    def __enter__(self) -> "StopRequests":
        global _active
        if threading.current_thread() is threading.main_thread():
            self._outer, _active = _active, self  # forwarded signals (SIGTERM) come here
            current = signal.getsignal(signal.SIGINT)
            if current is not signal.SIG_IGN:
                self._previous = current
                signal.signal(signal.SIGINT, self._handle)
                self._installed = True
        return self

    def __exit__(self, *exc_info) -> None:
        global _active
        if _active is self:
            _active = self._outer
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt  # the second request: stop now, without a checkpoint
        self.requested = signal.Signals(signum).name
        if self.notify is not None:
            self.notify(f"{self.requested}: stopping after the current step (again to stop "
                        "at once, without saving)")

    def request(self, reason: str) -> None:
        """Ask for a stop at the next boundary (keeps the first reason given)."""
        if self.requested is None:
            self.requested = reason


def forward_to_sigint(signum: int, frame: FrameType | None) -> None:
    """A signal handler asking ``fit`` to stop at the next step boundary while it runs
    (even where SIGINT itself is ignored), elsewhere doing what SIGINT does (with
    Python's default handler a KeyboardInterrupt)."""
    if _active is not None:
        _active._handle(signum, frame)
        return
    current = signal.getsignal(signal.SIGINT)
    if callable(current):
        current(signum, frame)
    else:
        raise KeyboardInterrupt
