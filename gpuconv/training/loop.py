"""The training loop: ``fit``, ``evaluate`` and ``predict`` for a Sequential model.

Host<->device syncs: a training step queues forward, loss, backward and the
optimizer update and reads nothing back. Loss values and correct counts are
collected on the device (:class:`~gpuconv.training.stats.EpochStats`) and read
at progress-bar refreshes (every 0.5 s, only with ``verbose=1``) and once at
the end of each epoch; ``evaluate`` reads once at its end.

NaN/Inf losses (``nan_policy``):

- ``'raise'`` (default): detected at the next sync point (bar refresh or
  epoch end) without a per-step sync; raises FloatingPointError naming the
  epoch and the first bad step. Updates made between that step and the sync
  point have already been applied (the weights are usually non-finite by
  then), so do not continue training the model after this error.
- ``'skip'``: the loss is read *before* each update (one small sync per
  step: the price of being able to skip); a non-finite batch gets no
  backward pass and no optimizer step and is counted in ``logs["skipped"]``
  and ``History.skipped_batches``. BatchNorm running statistics were already
  updated by that batch's forward pass; a per-batch scheduler still steps.

Mixed precision (``amp=True`` or a ``grad_scaler``; see :mod:`gpuconv.amp`):
the model computes in float16, the loss is computed on the float32 cast of its
output, the loss gradient is multiplied by the scaler's scale, and after the
backward pass :meth:`GradScaler.unscale_` divides the float32 gradients by it
and reads one finite/non-finite flag (the one host sync per step). A step
whose gradients overflowed is not applied (the optimizer does not see it, so
Adam's moments never absorb an inf) and is counted in ``logs["amp_skipped"]``;
that is expected while the scale adapts and is not a ``nan_policy`` error.
``logs["amp_scale"]`` is the scale at the end of the epoch; the scaler state is
saved in checkpoints and restored on resume.

Epochs are numbered from 1; ``fit(epochs=E)`` trains up to epoch ``E`` in
total, so resuming a checkpoint of epoch ``k`` trains epochs ``k+1 .. E``.
``max_steps=S`` also ends training after ``S`` batches in total (counting
resumed ones), in the middle of an epoch if need be (airbench trains 9.9
epochs this way: ``epochs=10, max_steps=ceil(9.9 * len(loader))``); that last,
shorter epoch is validated, logged and checkpointed like the others.

Random numbers and resume: on the CPU the generator states are checkpointed
and a resumed run continues them exactly. On other devices (CuPy) the
generator state cannot be saved, so every epoch starts by restarting the
device generators from ``(seed, epoch)``
(:func:`gpuconv.backend.random.reseed_for_epoch`): dropout masks and device
augmentation in epoch ``k`` are the same whether or not the run was resumed.
"""
from __future__ import annotations

import inspect
import os
import time
from typing import Any, Iterable, Sequence

from ..backend import (Array, Device, device_of, get_array_module, get_device, keep_freed_memory,
                       own_cpu_threads, reseed_for_epoch, set_state, to_numpy)
from ..layers.base import Layer
from ..amp import GradScaler, enable_mixed_precision, scaled_backward_step
from .batches import ArrayBatches, bind_device, check_batch
from .callbacks import Callback, CallbackList, History
from ..io.checkpoint import load_checkpoint, restore_model, save_checkpoint
from .modes import evaluating
from .progress import EpochProgress
from .stats import EpochStats, correct_count
from .tta import check_level, tta_forward

__all__ = ["fit", "evaluate", "predict", "ArrayBatches", "NAN_POLICIES"]

NAN_POLICIES = ("raise", "skip")


def model_device(model: Layer) -> Device:
    """The device of the model's parameters/buffers (the CPU for a model without any)."""
    return model.device or get_device("cpu")


def _unpack(batch: Any, where: str) -> tuple[Array, Array]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"{where}: data must yield (x, y) pairs, got {type(batch).__name__}"
                        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
    return batch[0], batch[1]


def _length(data: Any) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


def _takes_metric(scheduler: Any) -> bool:
    """True for schedulers whose ``step`` needs a metric (ReduceLROnPlateau.step(metric))."""
    try:
        params = inspect.signature(scheduler.step).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.default is inspect.Parameter.empty
               and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _nan_error(epoch: int, stats: EpochStats) -> FloatingPointError:
    return FloatingPointError(
        f"fit: non-finite training loss ({stats.first_bad_value}) at epoch {epoch}, step "
        f"{stats.first_bad_step}; training stopped (weights updated after that step may be "
        "non-finite). Lower the learning rate, check the data, clip gradients, or pass "
        "nan_policy='skip' to skip such batches.")


def loss_input(model: Layer, pred: Array) -> Array:
    """``pred`` in the model's parameter dtype: a float16 output of a mixed-precision
    model is cast to float32 so that the loss (softmax, log) is computed in float32."""
    dtype = model.dtype
    if dtype is None or pred.dtype == dtype or getattr(pred.dtype, "kind", "") != "f":
        return pred
    return pred.astype(dtype)


def _lr(optimizer: Any) -> float | None:
    lr = getattr(optimizer, "lr", None)
    return None if lr is None else float(lr)


class _Run:
    """State of one ``fit`` call (keeps ``fit`` itself readable)."""

    def __init__(self, model, train_data, epochs, optimizer, loss, val_data, callbacks,
                 scheduler, verbose, nan_policy, checkpoint_path,
                 scaler: GradScaler | None = None, max_steps: int | None = None) -> None:
        self.model, self.epochs, self.optimizer, self.loss = model, epochs, optimizer, loss
        self.scaler = scaler
        self.amp_skipped = 0       # steps of the current epoch skipped for inf/NaN gradients
        self.device = model_device(model)
        self.train_data = bind_device(train_data, self.device)
        self.val_data = None if val_data is None else bind_device(val_data, self.device)
        self.callbacks = CallbackList(callbacks, model)
        self.scheduler = scheduler
        self.per_batch = bool(getattr(scheduler, "per_batch", False))
        self.verbose = verbose
        self.skip = nan_policy == "skip"
        self.checkpoint_path = checkpoint_path
        self.history = History()
        self.completed = 0         # epochs completed (checkpoint "epoch")
        self.max_steps = max_steps
        self.steps = 0             # batches trained in total (checkpoint extra "steps")
        self.position = (0, 0)     # (epoch, step) in progress, for interruption reports

    # ---- checkpoints -------------------------------------------------------------------
    def resume(self, path: "str | os.PathLike") -> None:
        ckpt = load_checkpoint(path)
        restore_model(ckpt, self.model)
        if ckpt.optimizer_state is not None:
            self.optimizer.load_state_dict(ckpt.optimizer_state)
        if self.scheduler is not None and ckpt.scheduler_state is not None:
            self.scheduler.load_state_dict(ckpt.scheduler_state)
        if ckpt.lr is not None and hasattr(self.optimizer, "lr"):
            self.optimizer.lr = ckpt.lr
        scaler_state = ckpt.extra.get("grad_scaler")
        if self.scaler is not None and scaler_state:
            self.scaler.load_state_dict(scaler_state)
        loader_state = ckpt.extra.get("loader")
        if loader_state is not None and hasattr(self.train_data, "load_state_dict"):
            self.train_data.load_state_dict(loader_state)
        self.callbacks.load_state_dict(ckpt.extra.get("callbacks") or {})
        set_state(ckpt.rng_state)
        self.history = History(ckpt.history)
        self.completed = ckpt.epoch
        self.steps = int(ckpt.extra.get("steps") or 0)

    def save(self, interrupted: bool = False) -> None:
        extra: dict[str, Any] = {"callbacks": self.callbacks.state_dict(), "epochs": self.epochs,
                                 "steps": self.steps}
        if hasattr(self.train_data, "state_dict"):
            extra["loader"] = self.train_data.state_dict()
        if self.scaler is not None:
            extra["grad_scaler"] = self.scaler.state_dict()
        if interrupted:
            extra["interrupted"] = {"epoch": self.position[0], "step": self.position[1]}
        save_checkpoint(self.checkpoint_path, self.model, self.optimizer, self.scheduler,
                        self.completed, self.history, extra)

    # ---- one epoch ---------------------------------------------------------------------
    def train_epoch(self, epoch: int, stats: EpochStats, progress: EpochProgress) -> int:
        """Run the optimisation steps of one epoch; returns the number of skipped batches."""
        model, optimizer, loss, scaler = self.model, self.optimizer, self.loss, self.scaler
        params = model.parameters()
        model.train()
        skipped = 0
        self.amp_skipped = 0
        for step, batch in enumerate(self.train_data, 1):
            self.position = (epoch, step)
            where = f"fit (epoch {epoch}, step {step})"
            x, y = _unpack(batch, where)
            check_batch(x, y, self.device, where)
            optimizer.zero_grad()
            pred = model.forward(x)
            value = loss.forward(loss_input(model, pred), y)
            if self.skip and not bool(to_numpy(get_array_module(value).isfinite(value))):
                skipped += 1  # per-step sync: only in 'skip' mode
                model.clear_cache()
            else:
                correct = correct_count(pred, y)
                if scaler is None:
                    model.backward_params(loss.backward())  # the input gradient is not needed
                    optimizer.step()
                elif not scaled_backward_step(model, optimizer, loss, pred, scaler, params):
                    self.amp_skipped += 1  # a gradient overflowed: step skipped
                stats.add(value, correct, x.shape[0])
                self.callbacks.on_batch_end(step, {"size": int(x.shape[0]), "loss": value})
            if self.per_batch:
                self.scheduler.step()
            progress.step()
            if stats.first_bad_step is not None:
                raise _nan_error(epoch, stats)
            self.steps += 1
            if self.out_of_steps():
                break
        stats.sync()
        if stats.first_bad_step is not None:
            raise _nan_error(epoch, stats)
        return skipped

    def run_epoch(self, epoch: int) -> dict:
        start = time.perf_counter()
        if self.device.kind != "cpu":  # device generators can't be checkpointed: see
            reseed_for_epoch(epoch)    # gpuconv.backend.random (CPU: state saved exactly)
        if hasattr(self.train_data, "set_epoch"):
            self.train_data.set_epoch(epoch)
        self.callbacks.on_epoch_begin(epoch)
        stats = EpochStats()
        length = _length(self.train_data)
        if length is not None and self.max_steps is not None:
            length = max(0, min(length, self.max_steps - self.steps))
        progress = EpochProgress(epoch, self.epochs, length, stats,
                                 self.verbose, lr=lambda: _lr(self.optimizer))
        logs = None
        try:
            lr = _lr(self.optimizer)
            skipped = self.train_epoch(epoch, stats, progress)
            train_time = time.perf_counter() - start
            if stats.steps == 0 and skipped == 0:
                raise ValueError(f"fit: the training data yielded no batches in epoch {epoch}")
            logs = {"epoch": epoch, "loss": stats.loss, "accuracy": stats.accuracy,
                    "val_loss": None, "val_accuracy": None, "lr": lr, "time": None,
                    "images_per_s": stats.samples / train_time if train_time > 0 else None,
                    "skipped": skipped}
            if self.scaler is not None:
                logs["amp_skipped"] = self.amp_skipped
                logs["amp_scale"] = self.scaler.scale
            if self.val_data is not None:
                val = evaluate(self.model, self.val_data, self.loss)
                logs["val_loss"], logs["val_accuracy"] = val["loss"], val["accuracy"]
            if self.scheduler is not None and not self.per_batch:
                if _takes_metric(self.scheduler):
                    metric = logs["val_loss"] if logs["val_loss"] is not None else logs["loss"]
                    self.scheduler.step(metric)
                else:
                    self.scheduler.step()
            logs["time"] = time.perf_counter() - start
        finally:
            progress.close(logs)
        return logs

    def out_of_steps(self) -> bool:
        return self.max_steps is not None and self.steps >= self.max_steps

    def run(self) -> History:
        model = self.model
        model.stop_training = False
        model.history = self.history
        self.callbacks.on_train_begin()
        try:
            for epoch in range(self.completed + 1, self.epochs + 1):
                if self.out_of_steps():
                    break
                logs = self.run_epoch(epoch)
                self.history.append(logs)
                self.callbacks.on_epoch_end(epoch, logs)
                self.completed = epoch
                if self.checkpoint_path is not None:
                    self.save()
                if model.stop_training or self.out_of_steps():
                    break
        except KeyboardInterrupt:
            if self.checkpoint_path is not None:
                self.save(interrupted=True)
            raise
        self.callbacks.on_train_end({"history": self.history})
        model.clear_cache()
        return self.history


def fit(model: Layer, train_data: Iterable, epochs: int, optimizer: Any, loss: Any,
        val_data: Iterable | None = None, callbacks: Sequence[Callback] = (),
        scheduler: Any = None, verbose: int = 1,
        resume_from: "str | os.PathLike | None" = None, nan_policy: str = "raise",
        checkpoint_path: "str | os.PathLike | None" = None, amp: bool = False,
        grad_scaler: GradScaler | None = None, max_steps: int | None = None) -> History:
    """Train ``model`` (see :meth:`gpuconv.models.Sequential.fit`)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"fit: epochs must be a positive int, got {epochs!r}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int)
                                  or max_steps < 1):
        raise ValueError(f"fit: max_steps must be a positive int or None, got {max_steps!r}")
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"fit: nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(f"fit: verbose must be 0, 1 or 2, got {verbose!r}")
    for name, obj, methods in (("optimizer", optimizer, ("step", "zero_grad")),
                               ("loss", loss, ("forward", "backward"))):
        missing = [m for m in methods if not callable(getattr(obj, m, None))]
        if missing:
            raise TypeError(f"fit: {name} {obj!r} lacks {missing}")
    if isinstance(train_data, (tuple, list)) and len(train_data) == 2 and \
            not isinstance(train_data[0], (tuple, list)):
        raise TypeError("fit: train_data must be an iterable of (x, y) batches, not an "
                        "(x, y) pair; wrap arrays in gpuconv.training.loop.ArrayBatches(x, y, "
                        "batch_size)")
    if grad_scaler is not None and not isinstance(grad_scaler, GradScaler):
        raise TypeError(f"fit: grad_scaler must be a gpuconv GradScaler, got {grad_scaler!r}")
    if amp:
        enable_mixed_precision(model, "float16")
        if grad_scaler is None:
            grad_scaler = GradScaler()
    model._fit_loss = loss
    keep_freed_memory()  # see gpuconv.backend.host_memory: no page faults per step
    run = _Run(model, train_data, epochs, optimizer, loss, val_data, callbacks, scheduler,
               verbose, nan_policy, None if checkpoint_path is None else os.fspath(checkpoint_path),
               grad_scaler, max_steps)
    # new arrays go to the model's GPU (a no-op on the CPU); on the CPU, gpuconv's worker
    # threads get the cores (gpuconv.backend.threads: BLAS held at one thread meanwhile)
    with run.device.context(), own_cpu_threads():
        if resume_from is not None:
            run.resume(resume_from)
        return run.run()


def _tta_level(tta: "bool | int") -> int:
    """``tta``: False/0 none, True/2 mirror + translations, 1 mirror only."""
    return 2 if tta is True else 0 if tta is False else check_level(tta)


def evaluate(model: Layer, data: Iterable, loss: Any = None, tta: "bool | int" = False) -> dict:
    """Mean loss and accuracy of ``model`` over ``data`` in eval mode.

    ``data`` yields (x, y) batches on the model's device (or is an
    ArrayBatches). ``loss``: a loss object; None uses the loss of the last
    ``fit`` (if any). ``tta``: test-time augmentation of the outputs
    (:mod:`gpuconv.training.tta`; True = level 2, 6 views; 1 = mirror only).
    Returns ``{"loss": float | None, "accuracy": float | None, "samples": int}``
    (None where not applicable). Reads the device once.
    Layer modes are restored and caches cleared afterwards.
    """
    loss = loss if loss is not None else getattr(model, "_fit_loss", None)
    level = _tta_level(tta)
    device = model_device(model)
    data = bind_device(data, device)
    stats = EpochStats()
    with device.context(), evaluating(model):
        for step, batch in enumerate(data, 1):
            where = f"evaluate (step {step})"
            x, y = _unpack(batch, where)
            check_batch(x, y, device, where)
            pred = tta_forward(model.forward, x, level) if level else model.forward(x)
            value = None if loss is None else loss.forward(loss_input(model, pred), y)
            stats.add(value, correct_count(pred, y), x.shape[0])
    stats.sync()
    if stats.steps == 0:
        raise ValueError("evaluate: the data yielded no batches")
    return {"loss": stats.loss, "accuracy": stats.accuracy, "samples": stats.samples}


def predict(model: Layer, x: Array, batch_size: int = 256, tta: "bool | int" = False) -> Array:
    """Outputs of ``model`` for inputs ``x`` (N, ...), in eval mode, ``batch_size`` at a time.

    ``tta``: test-time augmentation (images (N, C, H, W) only): the weighted
    mean of the outputs over mirrored/shifted views (:mod:`gpuconv.training.tta`;
    True = level 2, 6 views; 1 = mirror only).

    ``x`` must be an array on the model's device (TypeError otherwise) with the
    model's dtype. Returns one device array (N, ...) of outputs. Layer modes are
    restored and caches cleared afterwards. No host sync.
    """
    device = model_device(model)
    try:
        x_device = device_of(x)
    except TypeError:
        raise TypeError(f"predict: x must be an array on {device}, got "
                        f"{type(x).__module__}.{type(x).__name__}") from None
    if x_device != device:
        raise TypeError(f"predict: x is on {x_device} but the model is on {device}; move it "
                        "with gpuconv.backend.to_device(x, model.device)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"predict: batch_size must be a positive int, got {batch_size!r}")
    n = x.shape[0] if getattr(x, "ndim", 0) >= 1 else 0
    if n == 0:
        raise ValueError(f"predict: x must hold at least one sample, got shape "
                         f"{getattr(x, 'shape', None)}")
    level = _tta_level(tta)
    if level and x.ndim != 4:
        raise ValueError(f"predict: tta needs images (N, C, H, W), got shape {x.shape}")
    xp = get_array_module(x)
    with device.context(), evaluating(model):
        outputs = [tta_forward(model.forward, x[i:i + batch_size], level) if level
                   else model.forward(x[i:i + batch_size]) for i in range(0, n, batch_size)]
        return outputs[0] if len(outputs) == 1 else xp.concatenate(outputs, axis=0)
