"""Per-epoch progress display for ``fit``.

``verbose=1``: a tqdm bar per epoch showing loss, accuracy, the learning
rate and images/s. The running values are read from the device
(:meth:`EpochStats.sync`) only when the postfix is refreshed, every
``interval`` seconds (0.5 by default): that read is the only host<->device
sync of the training loop. The learning rate comes from an ``lr`` callable
(``fit`` passes one returning ``optimizer.lr``, a Python float: no sync),
called at every refresh so per-batch schedulers show up live. ``verbose=2``:
one line per epoch, no per-step reads. ``verbose=0``: silent.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO

from .stats import EpochStats

__all__ = ["EpochProgress", "format_logs", "REFRESH_INTERVAL"]

REFRESH_INTERVAL = 0.5
"""Seconds between progress-bar refreshes (each one reads the running values)."""


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_logs(logs: dict) -> str:
    """``"loss=0.3 accuracy=0.9 ..."`` for the numeric entries of an epoch's logs."""
    keys = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_s", "time",
            "skipped", "amp_skipped", "amp_scale")
    return " ".join(f"{k}={_fmt(logs[k])}" for k in keys if logs.get(k) is not None)


class EpochProgress:
    """Progress of one epoch: ``step(n)`` after every batch, ``close(logs)`` at the end.

    ``lr``: optional zero-argument callable returning the current learning
    rate (a Python float, or None to leave it out); called at each refresh.
    """

    def __init__(self, epoch: int, epochs: int, total: int | None, stats: EpochStats,
                 verbose: int = 1, interval: float | None = None,
                 file: TextIO | None = None,
                 lr: Callable[[], float | None] | None = None) -> None:
        self.epoch, self.epochs = epoch, epochs
        self.stats = stats
        self.lr = lr
        self.verbose = verbose
        self.interval = float(REFRESH_INTERVAL if interval is None else interval)
        self.file = file
        self.start = time.perf_counter()
        self._last = self.start
        self.bar = None
        if verbose == 1:
            from tqdm.auto import tqdm  # noqa: PLC0415 - only needed for the bar

            self.bar = tqdm(total=total, desc=f"Epoch {epoch}/{epochs}", unit="batch",
                            leave=True, dynamic_ncols=True, file=file or sys.stderr,
                            mininterval=self.interval)

    def step(self, n: int = 1) -> None:
        """Count one finished batch; every ``interval`` s, sync and show running values."""
        if self.bar is None:
            return
        self.bar.update(n)
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self.refresh(now)

    def refresh(self, now: float | None = None) -> None:
        """Read the running values (a device sync) and the lr, and show them in the bar."""
        self.stats.sync()
        if self.bar is None:
            return
        elapsed = max((now or time.perf_counter()) - self.start, 1e-9)
        postfix = {"loss": _fmt(self.stats.loss)}
        if self.stats.accuracy is not None:
            postfix["acc"] = _fmt(self.stats.accuracy)
        lr = None if self.lr is None else self.lr()
        if lr is not None:
            postfix["lr"] = _fmt(float(lr))
        postfix["img/s"] = f"{self.stats.samples / elapsed:.0f}"
        self.bar.set_postfix(postfix, refresh=False)

    def close(self, logs: dict | None = None) -> None:
        """Finish the display; with ``logs`` show the epoch's final values."""
        if self.bar is not None:
            if logs is not None:
                self.bar.set_postfix_str(format_logs(logs), refresh=False)
            self.bar.close()
            self.bar = None
        elif self.verbose == 2 and logs is not None:
            print(f"Epoch {self.epoch}/{self.epochs} {format_logs(logs)}",
                  file=self.file or sys.stdout, flush=True)
