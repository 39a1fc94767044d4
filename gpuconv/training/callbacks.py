"""Callbacks for ``fit``, and the History it returns.

Epochs are numbered from 1 everywhere (callbacks, logs, files, checkpoints).
An epoch's ``logs`` dict holds Python floats (never device arrays):
``epoch``, ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, ``lr``,
``time`` (s, whole epoch including validation), ``images_per_s`` (training
phase) and ``skipped`` (batches skipped by ``nan_policy='skip'``); values that
do not apply are None. Set ``model.stop_training = True`` in a callback to
end training after the current epoch.

Stopping at once: a KeyboardInterrupt raised in ``on_batch_end`` or
``on_epoch_end`` is a stop request, like Ctrl-C: the other callbacks still
see that step (epoch), the step is finished, the checkpoint of that position
is written (with ``checkpoint_path``) and ``fit`` raises
:class:`~gpuconv.training.interrupts.TrainingInterrupted`.

Callback state in checkpoints (a general mechanism: every training
checkpoint carries it, whatever the callback):

- ``state_dict()`` is called on every callback each time a checkpoint is
  written -- after an epoch, at a periodic mid-epoch checkpoint, on a stop
  request -- always at a step boundary (after the last completed step's
  ``on_batch_end``). Return JSON-able values (None, bool, int, float, str,
  lists, tuples, dicts) and numpy or device arrays (device arrays are copied
  to the host; e.g. the shadow weights of an EMA callback). Return ``{}``
  (the default) for a callback without state.
- On ``fit(resume_from=...)`` each callback's ``load_state_dict(state)``
  gets what its ``state_dict()`` returned (arrays as host numpy arrays: move
  them with ``gpuconv.backend.to_device(a, self.model.device)``), *before*
  ``on_train_begin``. Saved states are matched to callbacks by class name and
  order among the callbacks of that class, so adding or removing a callback
  of another class does not shift them; a callback with no saved state keeps
  its fresh state.
- A checkpoint written inside an epoch resumes inside it: ``on_epoch_begin``
  is called again for that epoch with ``logs={"resumed_step": k}`` (k steps
  already done; keep per-epoch accumulators then, they came back with
  ``load_state_dict``), and ``on_batch_end`` continues with step ``k + 1``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any, Iterable

from ..backend import to_device
from ..io.atomic import atomic_write_text


__all__ = ["History", "Callback", "CallbackList", "EarlyStopping", "ModelCheckpoint",
           "HistoryLogger", "FreezeAfter", "LOG_FIELDS"]

LOG_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "time",
              "images_per_s")


class History:
    """Per-epoch logs of a training run. ``records``: list of dicts (one per epoch);
    ``history``: dict of lists by key (Keras style, ``history["val_loss"]``)."""

    def __init__(self, records: Iterable[dict] = ()) -> None:
        self.records: list[dict] = [dict(r) for r in records]
        self.skipped_batches = sum(int(r.get("skipped") or 0) for r in self.records)

    def append(self, logs: dict) -> None:
        self.records.append(dict(logs))
        self.skipped_batches += int(logs.get("skipped") or 0)

    @property
    def history(self) -> dict[str, list]:
        keys: list[str] = []
        for r in self.records:
            keys += [k for k in r if k not in keys]
        return {k: [r.get(k) for r in self.records] for k in keys}

    @property
    def epochs(self) -> list[int]:
        return [r["epoch"] for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"History(epochs={len(self.records)}, keys={list(self.history)})"


class Callback:
    """Base class; override any hook. ``self.model`` is set by ``fit`` before training.

    ``state_dict()``/``load_state_dict()`` (JSON-able values and arrays) let
    training checkpoints resume a callback's progress; see the module doc for
    when they are called.
    """

    model: Any = None

    def set_model(self, model: Any) -> None:
        self.model = model

    def on_train_begin(self, logs: dict | None = None) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Before the epoch's first step; ``logs = {"resumed_step": k}`` when a resumed
        run continues this epoch after its step ``k`` (else None)."""

    def on_batch_end(self, step: int, logs: dict | None = None) -> None:
        """After each optimizer step; ``logs = {"size": n, "loss": 0-d device array}``
        (reading the loss forces a device sync, avoid it in fast callbacks)."""

    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...

    def on_train_end(self, logs: dict | None = None) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class CallbackList(Callback):
    """Calls each hook on every callback in order."""

    def __init__(self, callbacks: Iterable[Callback], model: Any) -> None:
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"fit: callbacks must be Callback instances, got {cb!r}")
            cb.set_model(model)
        self.model = model

    def on_train_begin(self, logs=None):
        for cb in self.callbacks:
            cb.on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, logs)

    def on_batch_end(self, step, logs=None):
        self._each("on_batch_end", step, logs)

    def on_epoch_end(self, epoch, logs):
        self._each("on_epoch_end", epoch, logs)

    def _each(self, hook: str, *args: Any) -> None:
        """Call ``hook`` on every callback; a KeyboardInterrupt (a stop request) is
        re-raised only after all of them have seen the step/epoch."""
        stop: KeyboardInterrupt | None = None
        for cb in self.callbacks:
            try:
                getattr(cb, hook)(*args)
            except KeyboardInterrupt as exc:
                stop = stop or exc
        if stop is not None:
            raise stop

    def on_train_end(self, logs=None):
        for cb in self.callbacks:
            cb.on_train_end(logs)

    def state_dict(self) -> dict:
        return {"callbacks": [{"type": type(cb).__name__, "state": cb.state_dict()}
                              for cb in self.callbacks]}

    def load_state_dict(self, state: dict) -> None:
        """Give each callback the saved state of the same class and rank among the
        callbacks of that class (see the module doc)."""
        saved: dict[str, list[dict]] = {}
        for entry in state.get("callbacks", []):
            saved.setdefault(entry.get("type"), []).append(entry.get("state") or {})
        seen: dict[str, int] = {}
        for cb in self.callbacks:
            name = type(cb).__name__
            rank = seen.get(name, 0)
            seen[name] = rank + 1
            states = saved.get(name, [])
            if rank < len(states) and states[rank]:
                cb.load_state_dict(states[rank])


def _resolve_mode(mode: str, monitor: str, who: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{who}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


def _monitored(logs: dict, monitor: str, who: str) -> float:
    value = logs.get(monitor)
    if value is None:
        available = sorted(k for k, v in logs.items() if isinstance(v, (int, float)))
        hint = " (pass val_data to fit)" if monitor.startswith("val_") else ""
        raise ValueError(f"{who}: monitored value {monitor!r} is not in the epoch logs"
                         f"{hint}; available: {available}")
    return float(value)


class _Monitor(Callback):
    """Tracks the best value of ``monitor``."""

    def __init__(self, monitor: str, mode: str, min_delta: float) -> None:
        self.monitor = monitor
        self.mode = _resolve_mode(mode, monitor, type(self).__name__)
        self.min_delta = abs(float(min_delta))
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch: int | None = None

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state["best"])
        self.best_epoch = state["best_epoch"]


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for
    ``patience`` epochs. ``mode``: 'min', 'max' or 'auto' (max for names
    containing 'acc'). With ``restore_best_weights`` the parameters and
    buffers of the best epoch are copied (on the device) and put back when
    training ends. ``stopped_epoch``: the epoch training stopped at (None if not).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, mode: str = "auto",
                 min_delta: float = 0, restore_best_weights: bool = True) -> None:
        super().__init__(monitor, mode, min_delta)
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an int >= 0, got {patience!r}")
        self.patience = patience
        self.restore_best_weights = bool(restore_best_weights)
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_weights: dict | None = None
        self._last_epoch: int | None = None

    def on_train_begin(self, logs=None):
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs):
        value = _monitored(logs, self.monitor, "EarlyStopping")
        self._last_epoch = epoch
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = {k: v.copy() for k, v in self.model.state_dict().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if (self.restore_best_weights and self.best_weights is not None
                and self.best_epoch != self._last_epoch):
            self.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(wait=self.wait, last_epoch=self._last_epoch)
        if self.best_weights is not None:
            state["best_weights"] = self.best_weights  # device arrays; checkpoints pack them
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.wait = int(state["wait"])
        self._last_epoch = state.get("last_epoch")
        if state.get("best_weights") is not None:  # host arrays from a checkpoint
            device = self.model.device if self.model is not None else None
            self.best_weights = {k: v if device is None else to_device(v, device)
                                 for k, v in state["best_weights"].items()}


class ModelCheckpoint(_Monitor):
    """Save the model with ``model.save`` (atomic) at the end of epochs.

    ``path`` may contain format fields filled from the logs, e.g.
    ``"ckpt-{epoch:03d}-{val_loss:.3f}.npz"``. With ``save_best_only`` the
    file is written only when ``monitor`` improves on the best so far.
    ``saved``: list of (epoch, path) written.
    """

    def __init__(self, path: "str | os.PathLike", monitor: str = "val_loss",
                 save_best_only: bool = True, mode: str = "auto", min_delta: float = 0) -> None:
        super().__init__(monitor, mode, min_delta)
        self.path = os.fspath(path)
        self.save_best_only = bool(save_best_only)
        self.saved: list[tuple[int, str]] = []

    def on_epoch_end(self, epoch, logs):
        if self.save_best_only:
            value = _monitored(logs, self.monitor, "ModelCheckpoint")
            if not self._improved(value):
                return
            self.best, self.best_epoch = value, epoch
        fields = {k: v for k, v in logs.items() if v is not None}
        fields["epoch"] = epoch
        path = self.path.format(**fields)
        self.model.save(path)
        self.saved.append((epoch, path))


class HistoryLogger(Callback):
    """Write the training history after every epoch (atomically rewritten files).

    ``json_path``: a JSON list of per-epoch objects; ``csv_path``: a CSV with a
    header row. Columns/keys: ``epoch, loss, accuracy, val_loss, val_accuracy,
    lr, time, images_per_s`` (missing values: JSON null / empty CSV cell). On
    a resumed run the epochs already in ``model.history`` are kept.
    """

    def __init__(self, json_path: "str | os.PathLike | None" = None,
                 csv_path: "str | os.PathLike | None" = None) -> None:
        if json_path is None and csv_path is None:
            raise ValueError("HistoryLogger: give json_path, csv_path or both")
        self.json_path = None if json_path is None else os.fspath(json_path)
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        self.rows: list[dict] = []

    def on_train_begin(self, logs=None):
        history = getattr(self.model, "history", None)
        self.rows = [self._row(r) for r in history.records] if history is not None else []

    @staticmethod
    def _row(logs: dict) -> dict:
        row = {}
        for key in LOG_FIELDS:
            value = logs.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                value = None if math.isnan(value) else value
            row[key] = value
        return row

    def on_epoch_end(self, epoch, logs):
        self.rows.append(self._row(logs))
        if self.json_path is not None:
            atomic_write_text(self.json_path, json.dumps(self.rows, indent=1) + "\n")
        if self.csv_path is not None:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS, lineterminator="\n")
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
            atomic_write_text(self.csv_path, buffer.getvalue())


class FreezeAfter(Callback):
    """Train ``parameters`` only during the first ``epochs`` epochs, then freeze them
    (``requires_grad = False``: optimizers, regularizers and clipping skip them).

    airbench trains the bias of its whitening convolution for 3 epochs this way.
    Set at the start of every epoch, so a resumed run gets the same state.
    """

    def __init__(self, parameters: Iterable[Any], epochs: int) -> None:
        self.parameters = list(parameters)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"FreezeAfter: epochs must be an int >= 0, got {epochs!r}")
        self.epochs = epochs

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        for p in self.parameters:
            p.requires_grad = epoch <= self.epochs
