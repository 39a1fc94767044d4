"""Per-epoch progress display for ``fit``, sized to the terminal.

``verbose=1``: one live line per epoch (rewritten in place with ``\\r`` on
stderr): the epoch, a bar and percentage where there is room, the batch
count, the running loss and accuracy, the learning rate, images/s and the
estimated time left for the epoch (``ETA``) and for the whole run
(``run``). The running values are read from the device
(:meth:`EpochStats.sync`) only when the line is refreshed, every
``interval`` seconds (0.5 by default, see :data:`REFRESH_INTERVAL`): that read is the only host<->device
sync of the training loop. The learning rate comes from an ``lr`` callable
(``fit`` passes one returning ``optimizer.lr``, a Python float: no sync),
called at every refresh so per-batch schedulers show up live. At the end of
the epoch the live line is replaced by the epoch's final values (one or two
lines). ``verbose=2``: those final lines only, on stdout. ``verbose=0``: silent.

Width: every line fits the terminal (:func:`gpuconv.training.console.terminal_width`;
80 columns when not writing to a terminal). The live line leaves out, in
this order, the bar, images/s, the learning rate, the percentage and the
accuracy when the terminal is narrow; the final values wrap onto a second line and then
leave out images/s, the time, the loss scale and the learning rate.

Time left: ``ETA`` is the rest of this epoch's batches at this session's
rate; ``run`` adds the remaining epochs at the mean duration of the epochs
already done (validation included), or at this epoch's projected training
time before any epoch has finished. Early stopping can end the run sooner.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Sequence, TextIO

from .console import fit_fields, terminal_width
from .stats import EpochStats

__all__ = ["EpochProgress", "format_logs", "epoch_lines", "format_duration",
           "REFRESH_INTERVAL"]

REFRESH_INTERVAL = 0.5
"""Seconds between progress-line refreshes (each one reads the running values);
``$GPUCONV_PROGRESS_INTERVAL`` overrides it (e.g. 5 for a slow remote terminal,
0 to refresh after every step)."""


def _interval() -> float:
    text = os.environ.get("GPUCONV_PROGRESS_INTERVAL", "")
    try:
        value = float(text)
    except ValueError:
        return REFRESH_INTERVAL
    return value if value >= 0 else REFRESH_INTERVAL

_LOG_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_s", "time",
             "skipped", "amp_skipped", "amp_scale")
# the epoch-end fields left out first when two lines are not enough
_LOG_DROP = ("images_per_s", "time", "amp_scale", "lr", "amp_skipped", "skipped", "accuracy")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_duration(seconds: float) -> str:
    """``"0:07"``, ``"12:05"``, ``"1:02:13"`` (h:mm:ss from one hour on), ``"123h"``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 100:
        return f"{hours}h"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def _log_fields(logs: dict) -> list[tuple[str, str]]:
    fields = []
    for key in _LOG_KEYS:
        value = logs.get(key)
        if value is None or (key in ("skipped", "amp_skipped") and not value):
            continue
        text = f"{value:.1f}s" if key == "time" and isinstance(value, (int, float)) else \
            f"{value:.0f}" if key == "images_per_s" and isinstance(value, (int, float)) else \
            _fmt(value)
        fields.append((key, f"{key}={text}"))
    return fields


def format_logs(logs: dict) -> str:
    """``"loss=0.3 accuracy=0.9 ..."`` for the numeric entries of an epoch's logs
    (zero skip counts left out)."""
    return " ".join(text for _, text in _log_fields(logs))


def epoch_lines(epoch: int, epochs: int, logs: dict, width: int) -> list[str]:
    """``"Epoch e/E loss=... val_accuracy=..."`` in at most two lines of ``width``
    columns (see the module doc for what is left out when even two do not fit)."""
    fields = _log_fields(logs)
    keys = [key for key, _ in fields]
    drop = [keys.index(k) for k in _LOG_DROP if k in keys]
    return fit_fields([text for _, text in fields], width, lead=f"Epoch {epoch}/{epochs}",
                      max_lines=2, drop_order=drop)


class EpochProgress:
    """Progress of one epoch: ``step(n)`` after every batch, ``close(logs)`` at the end.

    ``total``: batches in the epoch (None if unknown); ``initial``: batches
    already done (a resumed epoch); ``epoch_times``: durations (s) of the
    epochs done so far, for the run's time left. ``lr``: optional
    zero-argument callable returning the current learning rate (a Python
    float, or None to leave it out); called at each refresh. ``file``: where
    the live line goes (default stderr) and, with ``verbose=2``, the
    epoch lines (default stdout).
    """

    def __init__(self, epoch: int, epochs: int, total: int | None, stats: EpochStats,
                 verbose: int = 1, interval: float | None = None,
                 file: TextIO | None = None,
                 lr: Callable[[], float | None] | None = None, initial: int = 0,
                 epoch_times: Sequence[float] = ()) -> None:
        self.epoch, self.epochs = epoch, epochs
        self.total = total
        self.stats = stats
        self.lr = lr
        self.verbose = verbose
        self.interval = float(_interval() if interval is None else interval)
        self.file = file
        self.n = self.initial = int(initial)
        self.epoch_times = [float(t) for t in epoch_times]
        self.start = time.perf_counter()
        self._last = self.start
        self._shown = 0            # length of the live line on screen
        self._note = ""            # e.g. "validating"
        self._samples0 = stats.samples  # samples of a resumed epoch's earlier steps
        self.live = verbose == 1
        if self.live:
            self._render(self.start, running=False)

    @property
    def _out(self) -> TextIO:
        return self.file or sys.stderr

    def step(self, n: int = 1) -> None:
        """Count one finished batch; every ``interval`` s, sync and show running values."""
        if not self.live:
            return
        self.n += n
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self.refresh(now)

    def refresh(self, now: float | None = None) -> None:
        """Read the running values (a device sync) and the lr, and show them."""
        self.stats.sync()
        if self.live:
            self._render(now or time.perf_counter())

    def validating(self) -> None:
        """Say that the epoch's training steps are done and validation runs."""
        if self.live:
            self._note = "validating"
            self.refresh()

    # ---- the live line -----------------------------------------------------------------
    def time_left(self, now: float) -> tuple[float | None, float | None]:
        """(seconds left in this epoch's training, seconds left in the run), None if unknown."""
        done = self.n - self.initial
        if self.total is None or done <= 0:
            return None, None
        per_step = (now - self.start) / done
        epoch_left = max(0, self.total - self.n) * per_step
        later = self.epochs - self.epoch
        per_epoch = (sum(self.epoch_times) / len(self.epoch_times) if self.epoch_times
                     else per_step * self.total)
        return epoch_left, epoch_left + later * per_epoch

    def line(self, now: float, width: int, running: bool = True) -> str:
        """The live line for a terminal ``width`` columns wide (at most ``width - 1``)."""
        head = f"Epoch {self.epoch}/{self.epochs}"
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        fields: list[tuple[str, str]] = []  # (name, text), display order
        if self.total:
            fields.append(("pct", f"{100 * self.n / self.total:.0f}%"))
        fields.append(("count", count))
        if running and self.stats.synced_samples:
            fields.append(("loss", f"loss={_fmt(self.stats.loss)}"))
            if self.stats.accuracy is not None:
                fields.append(("acc", f"acc={_fmt(self.stats.accuracy)}"))
            lr = None if self.lr is None else self.lr()
            if lr is not None:
                fields.append(("lr", f"lr={_fmt(float(lr))}"))
            elapsed = max(now - self.start, 1e-9)
            rate = (self.stats.samples - self._samples0) / elapsed
            fields.append(("img/s", f"img/s={rate:.0f}"))
        epoch_left, run_left = self.time_left(now)
        if self._note:
            fields.append(("note", self._note))
        elif epoch_left is not None:
            fields.append(("eta", f"ETA {format_duration(epoch_left)}"))
        if run_left is not None and self.epochs > 1:
            fields.append(("run", f"run {format_duration(run_left)}"))
        limit = max(10, width - 1)  # the last column would make some terminals wrap
        names = [name for name, _ in fields]
        texts = [text for _, text in fields]
        drop = [names.index(n) for n in ("img/s", "lr", "pct", "acc", "run") if n in names]
        text = fit_fields(texts, limit, lead=head, max_lines=1, drop_order=drop)[0]
        inner = min(40, limit - len(text) - 3)  # a bar in what is left: " |###---|"
        if self.total and inner >= 8:
            done = min(inner, int(inner * self.n / self.total))
            text = f"{head} |{'#' * done}{'-' * (inner - done)}|{text[len(head):]}"
        return text[:limit]

    def _render(self, now: float, running: bool = True) -> None:
        text = self.line(now, terminal_width(self._out), running)
        pad = max(0, self._shown - len(text))
        self._out.write("\r" + text + " " * pad)
        self._out.flush()
        self._shown = len(text)

    def close(self, logs: dict | None = None) -> None:
        """Finish the display; with ``logs`` show the epoch's final values."""
        if self.live:
            self.live = False
            out = self._out
            if logs is not None:
                width = terminal_width(out)
                out.write("\r" + " " * self._shown + "\r")
                out.write("\n".join(epoch_lines(self.epoch, self.epochs, logs, width - 1)) + "\n")
            else:
                out.write("\n")
            out.flush()
        elif self.verbose == 2 and logs is not None:
            out = self.file or sys.stdout
            for text in epoch_lines(self.epoch, self.epochs, logs, terminal_width(out) - 1):
                print(text, file=out, flush=True)
