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
augmentation in epoch ``k`` are the same whether or not the run was resumed
from the end of an epoch. (Resumed from *inside* an epoch on such a device,
the rest of that epoch draws other masks than an uninterrupted run would;
from the next epoch on the draws agree again.)

Checkpoints, interrupts and exact resume (``checkpoint_path``; see
:mod:`gpuconv.training.checkpointing` and :mod:`gpuconv.training.interrupts`):
a checkpoint is written after every epoch, every ``checkpoint_every`` (10
minutes by default; or a number of steps) and on a stop request. Ctrl-C
while ``fit`` runs in the main thread is a stop request: the current step
is finished (or validation stopped between batches), the checkpoint of
that position written and :class:`TrainingInterrupted` (a KeyboardInterrupt)
raised; a second Ctrl-C raises at once without saving. ``resume_from``
continues with the next batch of the epoch the checkpoint was written in (or
with its validation). On the CPU, an interrupted-and-resumed run equals an
uninterrupted one bit for bit in: the weights and buffers, the optimizer,
scheduler, grad-scaler and callback states, and every history field except
the two measured ones, ``time`` and ``images_per_s`` (wall-clock). A
checkpoint whose run ended (status ``finished`` or ``stopped``) trains only
epochs beyond the last one, and none after early stopping.

Data parallelism (``comm``, :mod:`gpuconv.distributed`): every rank runs the
same steps on its shard of each global batch. Everything that decides where
training stops is agreed on by all ranks at the same step boundary: a stop
request that reached any rank (Ctrl-C and SIGTERM reach every rank through
mpiexec; one rank's signal or callback is enough) and a periodic checkpoint
that is due on any rank (one small host allreduce per step). Checkpoints are
written by rank 0 only, with the partial epoch's running totals summed over
the ranks, and every rank waits until it is on disk. A mid-epoch checkpoint
resumes with any number of ranks (the global batch and the data order do
not depend on it): the loader skips the global batches already trained.
"""
from __future__ import annotations

import inspect
import os
import sys
import time
import warnings
from typing import Any, Callable, Iterable, Sequence

from ..backend import (Array, Device, device_of, get_array_module, get_device, keep_freed_memory,
                       own_cpu_threads, reseed_for_epoch, set_state, to_numpy)
from ..layers.base import Layer
from ..amp import GradScaler, check_amp_device, enable_mixed_precision, scaled_backward_step
from ..distributed import Communicator, DataParallel, reduce_epoch_stats
from .batches import ArrayBatches, bind_device, check_batch
from .callbacks import Callback, CallbackList, History
from .checkpointing import DEFAULT_CHECKPOINT_EVERY, CheckpointEvery, partial_state
from .console import terminal_width, wrap_text
from .interrupts import StopRequests, TrainingInterrupted
from ..io.checkpoint import load_checkpoint, restore_model, save_checkpoint
from .modes import evaluating
from .progress import EpochProgress
from .stats import EpochStats, correct_count
from .tta import check_level, tta_forward

__all__ = ["fit", "evaluate", "predict", "ArrayBatches", "NAN_POLICIES", "TrainingInterrupted",
           "DEFAULT_CHECKPOINT_EVERY"]

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


#: A partial epoch's totals reset (the ranks other than 0 on a data-parallel resume).
_NO_TOTALS = {"steps": 0, "samples": 0, "loss_sum": 0.0, "correct_sum": 0, "synced_samples": 0}


class _Stop(Exception):
    """Internal: a stop was requested and the loop is at a boundary (see interrupts)."""


class _Epoch:
    """The epoch in progress: position, running totals and what its log will show.

    ``step``: steps done (batches skipped by nan_policy='skip' included);
    ``phase``: 'train' or 'validate'; ``lr``: the lr at the epoch's start;
    ``elapsed()``: seconds spent on it, in earlier sessions included.
    """

    def __init__(self, epoch: int, lr: float | None) -> None:
        self.epoch, self.lr = epoch, lr
        self.step = 0
        self.phase = "train"
        self.stats = EpochStats()
        self.skipped = 0
        self.before = 0.0          # seconds spent before a resume
        self.start = time.perf_counter()
        self.train_time: float | None = None

    def elapsed(self) -> float:
        return self.before + (time.perf_counter() - self.start)

    def restore(self, partial: dict) -> None:
        """Continue from a checkpoint's partial-epoch record (checkpointing.partial_state)."""
        self.step, self.phase, self.lr = int(partial["step"]), partial["phase"], partial["lr"]
        self.stats.load_state_dict(partial["stats"])
        self.skipped = int(partial["skipped"])
        self.before = float(partial["elapsed"])
        if self.phase == "validate":
            self.train_time = self.before

    def record(self, amp_skipped: int, stats: dict | None = None) -> dict:
        """The partial-epoch record; ``stats``: totals to record instead of this rank's
        (data parallelism: the sums over the ranks)."""
        return partial_state(self.epoch, self.step, self.phase, self.lr, self.elapsed(),
                             self.stats.state_dict() if stats is None else stats,
                             self.skipped, amp_skipped)


def _all_finite(model: Layer) -> bool:
    """One host read: are all parameters finite? (checked before writing a checkpoint)"""
    params = [p.data for p in model.parameters()]
    if not params:
        return True
    xp = get_array_module(params[0])
    flags = [xp.isfinite(p).all() for p in params]
    return bool(to_numpy(xp.stack(flags)).all())


class _Run:
    """State of one ``fit`` call (keeps ``fit`` itself readable)."""

    def __init__(self, model, train_data, epochs, optimizer, loss, val_data, callbacks,
                 scheduler, verbose, nan_policy, checkpoint_path,
                 scaler: GradScaler | None = None,
                 checkpoint_every: CheckpointEvery = CheckpointEvery(),
                 max_steps: int | None = None, comm: Communicator | None = None) -> None:
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
        self.every = checkpoint_every if checkpoint_path is not None else CheckpointEvery()
        self.history = History()
        self.completed = 0         # epochs completed (checkpoint "epoch")
        self.max_steps = max_steps
        self.steps = 0             # batches trained in total (checkpoint extra "steps")
        self.stopped = False       # resumed from a run that model.stop_training ended
        self.current: _Epoch | None = None     # the epoch in progress
        self.resume_partial: dict | None = None  # partial epoch of the resumed checkpoint
        self.resume_rng: dict | None = None
        self.stops = StopRequests()
        self.last_save = time.monotonic()
        self.steps_since_save = 0
        # ---- data parallelism (gpuconv.distributed): None in a single process
        self.comm = comm
        self.dp = DataParallel(comm, model, loss) if comm is not None and comm.size > 1 \
            else None
        if self.dp is not None and not self.dp.is_main:
            self.verbose = 0       # only rank 0 prints

    # ---- checkpoints -------------------------------------------------------------------
    def resume(self, path: "str | os.PathLike") -> None:
        ckpt = load_checkpoint(path) if self.dp is None else \
            self.dp.load_checkpoint(path, load_checkpoint)  # read on rank 0, sent to all
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
        self.stopped = ckpt.status == "stopped"
        self.resume_partial = ckpt.partial
        self.resume_rng = ckpt.rng_state if ckpt.partial is not None else None
        if ckpt.version == 1 and ckpt.status == "interrupted":
            warnings.warn(f"{ckpt.path}: a version-1 checkpoint written on an interrupt inside "
                          f"epoch {ckpt.epoch + 1}; it records no position, so that epoch is "
                          "trained again from its first batch (on top of its partly trained "
                          "weights)", stacklevel=3)

    def save(self, status: str = "running") -> None:
        """Write the checkpoint of the current position (a step or epoch boundary).

        With several ranks every rank calls this at the same boundary (the partial
        totals are summed over the ranks), rank 0 writes, and all return once the
        file is written."""
        extra: dict[str, Any] = {"callbacks": self.callbacks.state_dict(), "epochs": self.epochs,
                                 "steps": self.steps}
        if hasattr(self.train_data, "state_dict"):
            extra["loader"] = self.train_data.state_dict()
        if self.scaler is not None:
            extra["grad_scaler"] = self.scaler.state_dict()
        current = self.current
        partial = None
        if current is not None and (current.step > 0 or current.phase == "validate"):
            partial = current.record(self.amp_skipped, self._global_stats(current))
            if current.stats.first_bad_step is not None:
                raise _nan_error(current.epoch, current.stats)
        if not _all_finite(self.model):  # never overwrite the last good checkpoint
            where = (f"epoch {current.epoch}, step {current.step}" if current is not None
                     else f"the end of epoch {self.completed}")
            raise FloatingPointError(
                f"fit: non-finite weights at {where}; training stopped and no checkpoint "
                "written (the last one is from before). Lower the learning rate or clip "
                "gradients.")
        if status == "interrupted":
            extra["interrupted"] = ({"epoch": current.epoch, "step": current.step,
                                     "phase": current.phase} if partial is not None
                                    else {"epoch": self.completed, "step": 0})
            extra["interrupted"]["reason"] = self.stops.requested
        if self.dp is None or self.dp.is_main:  # only rank 0 writes (the states are equal)
            save_checkpoint(self.checkpoint_path, self.model, self.optimizer, self.scheduler,
                            self.completed, self.history, extra, partial=partial,
                            status=status)
        if self.dp is not None:
            self.comm.barrier()  # no rank goes on (or exits) before the file is written
        self.last_save = time.monotonic()
        self.steps_since_save = 0

    def _global_stats(self, current: _Epoch) -> dict | None:
        """The partial epoch's totals over all ranks (None in a single process). During
        validation they were summed already (after the training steps)."""
        if self.dp is None or current.phase != "train":
            return None
        totals = EpochStats()
        totals.load_state_dict(current.stats.state_dict())
        reduce_epoch_stats(self.comm, totals)
        return totals.state_dict()

    def agreed_stop(self, *flags: bool) -> tuple:
        """``(stop requested, *flags)`` agreed on by every rank: a stop request on any
        rank is one on all (its reason kept), a flag set on any rank is set on all.
        In a single process the local values."""
        if self.dp is None:
            return (self.stops.requested is not None, *flags)
        reason, *flags = self.dp.agree(self.stops.requested, *flags)
        if reason is not None:
            self.stops.request(reason)  # another rank's request (keeps a local one)
        return (reason is not None, *flags)

    def boundary(self) -> None:
        """At a step boundary: honour a stop request, write a periodic checkpoint if due."""
        due = self.every.enabled and self.every.due(time.monotonic() - self.last_save,
                                                    self.steps_since_save)
        stop, due = self.agreed_stop(due)
        if stop:
            raise _Stop
        if due:
            self.save()

    def check_stop(self) -> None:
        stop, = self.agreed_stop()
        if stop:
            raise _Stop

    # ---- one epoch ---------------------------------------------------------------------
    def batches(self, start: int) -> Iterable:
        """The training data from batch ``start + 1`` on (a mid-epoch resume)."""
        data = self.train_data
        if start == 0:
            return data
        if callable(getattr(data, "skip_batches", None)):
            data.skip_batches(start)  # leaves the first batches out without loading them
            return data
        iterator = iter(data)  # any other iterable: load and drop them ...
        for _ in range(start):
            if next(iterator, None) is None:
                break
        if self.device.kind == "cpu" and self.resume_rng is not None:
            set_state(self.resume_rng)  # ... and undo the random draws their loading made
        return iterator

    def train_epoch(self, epoch: int, current: _Epoch, progress: EpochProgress) -> None:
        """Run the optimisation steps of one epoch (from ``current.step + 1`` on)."""
        model, optimizer, loss, scaler = self.model, self.optimizer, self.loss, self.scaler
        params = model.parameters()
        stats = current.stats
        model.train()
        batches = self.batches(current.step)
        self.resume_rng = None
        for step, batch in enumerate(batches, current.step + 1):
            where = f"fit (epoch {epoch}, step {step})"
            x, y = _unpack(batch, where)
            check_batch(x, y, self.device, where)
            optimizer.zero_grad()
            n = int(x.shape[0])
            empty = self.dp is not None and n == 0  # see gpuconv.distributed.sharding
            if empty:
                self._check_empty_shard(where)
                value = None
            else:
                pred = model.forward(x)
                value = loss.forward(loss_input(model, pred), y)
            if self.skip and not self._finite(value):
                current.skipped += 1  # per-step sync: only in 'skip' mode
                model.clear_cache()
            else:
                if empty:
                    self._empty_shard_step(params)
                else:
                    correct = correct_count(pred, y)
                    if scaler is None:
                        model.backward_params(loss.backward())  # no input gradient needed
                        if self.dp is not None:
                            self.dp.reduce_gradients(n)
                        optimizer.step()
                    elif not scaled_backward_step(model, optimizer, loss, pred, scaler, params,
                                                  reduce_grads=self._reducer(n)):
                        self.amp_skipped += 1  # a gradient overflowed: step skipped
                    stats.add(self._logged(value), correct, n)
                try:
                    self.callbacks.on_batch_end(step, {"size": n, "loss": value})
                except KeyboardInterrupt:  # a callback's stop request: finish the step first
                    self.stops.request("callback")
            if self.per_batch:
                self.scheduler.step()
            current.step = step
            progress.step()
            if stats.first_bad_step is not None:
                raise _nan_error(epoch, stats)
            self.steps += 1
            self.steps_since_save += 1
            self.boundary()
            if self.out_of_steps():
                break
        stats.sync()
        if stats.first_bad_step is not None:
            raise _nan_error(epoch, stats)

    # ---- data parallelism helpers (no-ops in a single process) -------------------------
    def _finite(self, value: Array | None) -> bool:
        if self.dp is not None:
            return self.dp.all_finite(value)  # every rank must skip the same batches
        return bool(to_numpy(get_array_module(value).isfinite(value)))

    def _reducer(self, samples: int) -> Any:
        return None if self.dp is None else (lambda: self.dp.reduce_gradients(samples))

    def _logged(self, value: Array) -> Array:
        """The loss value the epoch statistics add up: a ``reduction="sum"`` loss of a
        rank's shard is 1/size of the global batch's sum, so it is scaled back (exact
        for equal shards: all but an epoch's last, uneven batch)."""
        if self.dp is None or not self.dp.summed_loss:
            return value
        return value * self.comm.size

    def _check_empty_shard(self, where: str) -> None:
        if self.dp.sync_bn_layers:
            raise ValueError(f"{where}: this rank's shard of the global batch is empty (the "
                             "batch has fewer samples than ranks) and the model has "
                             "SyncBatchNorm, whose collectives every rank must join; use "
                             "drop_last=True or a batch of at least one sample per rank")

    def _empty_shard_step(self, params: Any) -> None:
        """This rank got no samples of a global batch smaller than the number of ranks:
        it contributes a zero gradient with weight 0 and takes the same step (with a
        grad scaler: the same overflow decision and scale update as the others)."""
        self.dp.reduce_gradients(0)
        if self.scaler is None:
            self.optimizer.step()
            return
        if self.scaler.unscale_(params):
            self.optimizer.step()
        else:
            self.amp_skipped += 1
        self.scaler.update()

    def run_epoch(self, epoch: int) -> dict:
        if self.device.kind != "cpu":  # device generators can't be checkpointed: see
            reseed_for_epoch(epoch)    # gpuconv.backend.random (CPU: state saved exactly)
        if hasattr(self.train_data, "set_epoch"):
            self.train_data.set_epoch(epoch)
        current = self.current = _Epoch(epoch, _lr(self.optimizer))
        resumed = self.resume_partial
        self.resume_partial = None
        self.amp_skipped = 0
        if resumed is not None and resumed["epoch"] == epoch:
            current.restore(resumed)
            self.amp_skipped = int(resumed["amp_skipped"])
            if self.dp is not None and not self.dp.is_main:  # the totals (summed over the
                current.stats.load_state_dict({**resumed["stats"], **_NO_TOTALS})  # ranks)
                # continue on rank 0; the others start from zero with the same flags
        self.callbacks.on_epoch_begin(epoch, {"resumed_step": current.step}
                                      if resumed is not None else None)
        stats = current.stats
        times = [r["time"] for r in self.history.records
                 if isinstance(r.get("time"), (int, float))]
        length = _length(self.train_data)
        if length is not None and self.max_steps is not None:
            length = max(0, min(length, current.step + self.max_steps - self.steps))
        progress = EpochProgress(epoch, self.epochs, length, stats,
                                 self.verbose, lr=lambda: _lr(self.optimizer),
                                 initial=current.step, epoch_times=times)
        logs = None
        try:
            if current.phase == "train":
                self.train_epoch(epoch, current, progress)
                current.train_time = current.elapsed()
            if self.dp is not None:  # global loss/accuracy, rank 0's BN statistics
                self.dp.after_train_epoch(stats)
            train_time = current.train_time
            if stats.steps == 0 and current.skipped == 0:
                raise ValueError(f"fit: the training data yielded no batches in epoch {epoch}")
            logs = {"epoch": epoch, "loss": stats.loss, "accuracy": stats.accuracy,
                    "val_loss": None, "val_accuracy": None, "lr": current.lr, "time": None,
                    "images_per_s": stats.samples / train_time if train_time > 0 else None,
                    "skipped": current.skipped}
            if self.scaler is not None:
                logs["amp_skipped"] = self.amp_skipped
                logs["amp_scale"] = self.scaler.scale
            if self.val_data is not None:
                current.phase = "validate"
                progress.validating()
                val = _evaluate(self.model, self.val_data, self.loss, between=self.check_stop,
                                comm=self.comm)
                logs["val_loss"], logs["val_accuracy"] = val["loss"], val["accuracy"]
            if self.scheduler is not None and not self.per_batch:
                if _takes_metric(self.scheduler):
                    metric = logs["val_loss"] if logs["val_loss"] is not None else logs["loss"]
                    self.scheduler.step(metric)
                else:
                    self.scheduler.step()
            logs["time"] = current.elapsed()
            if self.dp is not None:
                self.dp.end_epoch(epoch)
        except BaseException:
            logs = None
            raise
        finally:
            progress.close(logs)
        return logs

    def out_of_steps(self) -> bool:
        return self.max_steps is not None and self.steps >= self.max_steps

    def interrupted(self, reason: str, saved: bool) -> TrainingInterrupted:
        current = self.current
        if current is None:
            return TrainingInterrupted(self.completed, 0, "epoch end", reason,
                                       self.checkpoint_path if saved else None)
        return TrainingInterrupted(current.epoch, current.step, current.phase, reason,
                                   self.checkpoint_path if saved else None)

    def run(self) -> History:
        model = self.model
        model.stop_training = False
        model.history = self.history
        notify = None if self.verbose == 0 else (
            lambda text: print("\n" + wrap_text(text, terminal_width(sys.stderr) - 1),
                               file=sys.stderr, flush=True))
        if self.dp is not None:  # same settings everywhere, then rank 0's weights
            self.dp.check_settings(self.optimizer, self.loss, self.train_data)
            self.dp.broadcast()
        self.stops = StopRequests(notify)
        with self.stops:
            try:
                self.callbacks.on_train_begin()
                first = self.epochs + 1 if self.stopped else self.completed + 1
                for epoch in range(first, self.epochs + 1):
                    if self.out_of_steps() and self.current is None and \
                            self.resume_partial is None:
                        break  # resumed after the last step: nothing more to train
                    logs = self.run_epoch(epoch)
                    self.history.append(logs)
                    try:
                        self.callbacks.on_epoch_end(epoch, logs)
                    except KeyboardInterrupt:  # a callback's stop request
                        self.stops.request("callback")
                    self.completed = epoch
                    self.current = None
                    stop, early = self.agreed_stop(bool(model.stop_training))
                    model.stop_training = early  # one rank's early stop ends every rank
                    last = model.stop_training or epoch == self.epochs or self.out_of_steps()
                    if self.checkpoint_path is not None:
                        self.save(("stopped" if model.stop_training else "finished") if last
                                  else "interrupted" if stop else "running")
                    if last:
                        break
                    if stop:
                        raise self.interrupted(self.stops.requested,
                                               self.checkpoint_path is not None)
            except _Stop:
                if self.checkpoint_path is not None:
                    self.save("interrupted")
                raise self.interrupted(self.stops.requested or "callback",
                                       self.checkpoint_path is not None) from None
            except TrainingInterrupted:
                raise
            except KeyboardInterrupt as exc:  # a second Ctrl-C, or not at a boundary
                raise self.interrupted("hard", False) from exc
        self.callbacks.on_train_end({"history": self.history})
        model.clear_cache()
        return self.history


def fit(model: Layer, train_data: Iterable, epochs: int, optimizer: Any, loss: Any,
        val_data: Iterable | None = None, callbacks: Sequence[Callback] = (),
        scheduler: Any = None, verbose: int = 1,
        resume_from: "str | os.PathLike | None" = None, nan_policy: str = "raise",
        checkpoint_path: "str | os.PathLike | None" = None, amp: bool = False,
        grad_scaler: GradScaler | None = None,
        checkpoint_every: Any = DEFAULT_CHECKPOINT_EVERY, max_steps: int | None = None,
        comm: Communicator | None = None) -> History:
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
    every = CheckpointEvery.parse(checkpoint_every)  # ValueError now, not mid-run
    if grad_scaler is not None and not isinstance(grad_scaler, GradScaler):
        raise TypeError(f"fit: grad_scaler must be a gpuconv GradScaler, got {grad_scaler!r}")
    if amp:
        check_amp_device(model_device(model))  # float16 on NumPy: hundreds of times slower
        enable_mixed_precision(model, "float16")
        if grad_scaler is None:
            grad_scaler = GradScaler()
    model._fit_loss = loss
    keep_freed_memory()  # see gpuconv.backend.host_memory: no page faults per step
    run = _Run(model, train_data, epochs, optimizer, loss, val_data, callbacks, scheduler,
               verbose, nan_policy, None if checkpoint_path is None else os.fspath(checkpoint_path),
               grad_scaler, every, max_steps, comm)
    # new arrays go to the model's GPU (a no-op on the CPU); on the CPU, gpuconv's worker
    # threads get the cores (gpuconv.backend.threads: BLAS held at one thread meanwhile)
    with run.device.context(), own_cpu_threads():
        if resume_from is not None:
            run.resume(resume_from)
        return run.run()


def _tta_level(tta: "bool | int") -> int:
    """``tta``: False/0 none, True/2 mirror + translations, 1 mirror only."""
    return 2 if tta is True else 0 if tta is False else check_level(tta)


def evaluate(model: Layer, data: Iterable, loss: Any = None, tta: "bool | int" = False,
             comm: Communicator | None = None) -> dict:
    """Mean loss and accuracy of ``model`` over ``data`` in eval mode.

    ``data`` yields (x, y) batches on the model's device (or is an
    ArrayBatches). ``loss``: a loss object; None uses the loss of the last
    ``fit`` (if any). ``tta``: test-time augmentation of the outputs
    (:mod:`gpuconv.training.tta`; True = level 2, 6 views; 1 = mirror only).
    Returns ``{"loss": float | None, "accuracy": float | None, "samples": int}``
    (None where not applicable). Reads the device once.
    Layer modes are restored and caches cleared afterwards. With ``comm`` (data
    parallel: each rank's ``data`` yields its shard) the totals are summed over
    the ranks, so every rank returns the global numbers; empty shards are skipped.
    """
    return _evaluate(model, data, loss, tta=tta, comm=comm)


def _evaluate(model: Layer, data: Iterable, loss: Any = None,
              between: "Callable[[], None] | None" = None, tta: "bool | int" = False,
              comm: Communicator | None = None) -> dict:
    """:func:`evaluate`; ``between()`` runs before every batch (fit's stop check; with
    ``comm`` a collective, so it runs on every rank for every batch, empty shards too)."""
    loss = loss if loss is not None else getattr(model, "_fit_loss", None)
    level = _tta_level(tta)
    device = model_device(model)
    data = bind_device(data, device)
    stats = EpochStats()
    with device.context(), evaluating(model):
        for step, batch in enumerate(data, 1):
            if between is not None:
                between()
            where = f"evaluate (step {step})"
            x, y = _unpack(batch, where)
            check_batch(x, y, device, where)
            if comm is not None and x.shape[0] == 0:
                continue  # a final batch smaller than the number of ranks
            pred = tta_forward(model.forward, x, level) if level else model.forward(x)
            value = None if loss is None else loss.forward(loss_input(model, pred), y)
            if value is not None and comm is not None and comm.size > 1 and \
                    getattr(loss, "reduction", "mean") == "sum":
                value = value * comm.size  # a shard's sum: see _Run._logged
            stats.add(value, correct_count(pred, y), x.shape[0])
    stats.sync()
    if comm is not None:
        reduce_epoch_stats(comm, stats)
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
