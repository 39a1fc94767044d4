"""The trainable model: ``gpuconv.Sequential`` with fit/evaluate/predict/summary/save."""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Sequence

from ..backend import Array
from ..containers.sequential import Sequential as _Sequential
from ..io.spec import layer_spec, save_model
from ..training import loop
from ..training.callbacks import Callback, History
from ..training.summary import summary as _summary

__all__ = ["Sequential"]


class Sequential(_Sequential):
    """A chain of layers that can be trained, evaluated, summarised and saved.

    Attributes set by :meth:`fit`: ``history`` (the :class:`History` of the
    last run) and ``stop_training`` (a callback sets it to True to stop after
    the current epoch).
    """

    def __init__(self, layers: Iterable[Any] = ()) -> None:
        super().__init__(layers)
        self.stop_training = False
        self.history: History | None = None

    def config(self) -> dict:
        """``{"layers": [{"type": ..., "config": ...}, ...]}`` (the saved architecture)."""
        return {"layers": [layer_spec(layer) for layer in self.layers]}

    def fit(self, train_data: Iterable, epochs: int, optimizer: Any, loss: Any,
            val_data: Iterable | None = None, callbacks: Sequence[Callback] = (),
            scheduler: Any = None, verbose: int = 1,
            resume_from: "str | os.PathLike | None" = None, nan_policy: str = "raise",
            checkpoint_path: "str | os.PathLike | None" = None, amp: bool = False,
            grad_scaler: Any = None, max_steps: int | None = None,
            checkpoint_every: Any = loop.DEFAULT_CHECKPOINT_EVERY, comm: Any = None) -> History:
        """Train for up to ``epochs`` epochs (1-based, counting resumed ones).

        - ``train_data``/``val_data``: re-iterable objects yielding ``(x, y)``
          batches on the model's device (x: (N, ...) in the model's dtype; y:
          (N,) int class labels or targets shaped like the output), e.g.
          :class:`gpuconv.training.loop.ArrayBatches` or a gpuconv DataLoader.
          ``set_epoch(epoch)`` is called on ``train_data`` before each epoch
          if it has one; ``state_dict``/``load_state_dict`` go into checkpoints.
          Batches on another device raise TypeError.
        - ``optimizer``: has ``zero_grad()``, ``step()``, ``lr``,
          ``state_dict()``/``load_state_dict()``; ``loss``: ``forward(pred,
          y)`` -> 0-d array, ``backward()`` -> d(pred).
        - ``scheduler``: stepped after every batch if ``scheduler.per_batch``,
          else after each epoch (``step(metric)`` with val_loss, or the
          training loss without val_data, for schedulers whose ``step`` takes
          a metric, like ReduceLROnPlateau).
        - ``verbose``: 0 silent, 1 a progress bar per epoch (loss, accuracy,
          lr, images/s refreshed every 0.5 s: the only per-step device read;
          the lr is a host float), 2 one line per epoch.
        - ``nan_policy``: 'raise' (FloatingPointError naming epoch and step,
          detected at the next sync point) or 'skip' (skip the update of
          batches with a non-finite loss; syncs every step). See
          :mod:`gpuconv.training.loop`.
        - ``checkpoint_path``: write a training checkpoint there (atomically)
          after every epoch, every ``checkpoint_every`` and on a stop request.
          Ctrl-C is one: the current step is finished, the checkpoint of that
          position written and :class:`~gpuconv.training.interrupts.TrainingInterrupted`
          (a KeyboardInterrupt) raised; a second Ctrl-C stops at once, unsaved.
        - ``checkpoint_every``: period of mid-epoch checkpoints: ``"10min"``
          (default), ``"90s"``, ``"2h"``, ``"500steps"`` (or an int: steps), or
          None/``"off"``; see :mod:`gpuconv.training.checkpointing`.
        - ``resume_from``: a checkpoint to restore (model, optimizer,
          scheduler, grad scaler, RNG, loader and callback state, history,
          the partial epoch) before continuing with the next batch; on the CPU
          the resumed run is bit-identical to an uninterrupted one (all but the
          wall-clock history fields ``time`` and ``images_per_s``). A finished
          run trains only epochs beyond its last; an early-stopped one none.
        - ``amp``: mixed precision: set the float16 compute policy on the model
          (:func:`gpuconv.amp.enable_mixed_precision`; it stays set
          after fit) and scale the loss with a :class:`GradScaler` (a new one
          unless ``grad_scaler`` is given). Steps whose gradients overflow are
          skipped and counted in ``logs["amp_skipped"]``; ``logs["amp_scale"]``
          is the scale. CUDA only: on the CPU (NumPy has no float16 BLAS) it
          raises ValueError; there, set the policy by hand and pass a
          ``grad_scaler`` to exercise the same path.
        - ``grad_scaler``: a :class:`gpuconv.amp.GradScaler` to use
          (its state is saved in checkpoints and restored on resume).
        - ``max_steps``: end training after this many batches in total
          (resumed ones included), mid-epoch if need be; None: no limit.
        - ``comm``: a :mod:`gpuconv.distributed` communicator for data-parallel
          training (each rank's ``train_data`` yields its shard, e.g. a
          ``DataLoader(..., comm=comm)`` or ``DeviceDataLoader(..., comm=comm)``):
          settings compared across ranks, rank 0's weights broadcast at the start
          (and after a resume), gradients averaged (sample-weighted; summed for a
          loss with ``reduction="sum"``) after every backward pass, logs and
          evaluation reduced over the ranks, stop requests and periodic
          checkpoints agreed on by all ranks at the same step; only rank 0 prints
          and writes the checkpoint. Callbacks run on every rank (write files on
          rank 0 only).

        Returns the :class:`History`: per-epoch logs with ``epoch, loss,
        accuracy, val_loss, val_accuracy, lr, time, images_per_s, skipped`` (and
        ``amp_skipped, amp_scale`` with a grad scaler).
        """
        return loop.fit(self, train_data, epochs, optimizer, loss, val_data=val_data,
                        callbacks=callbacks, scheduler=scheduler, verbose=verbose,
                        resume_from=resume_from, nan_policy=nan_policy,
                        checkpoint_path=checkpoint_path, amp=amp, grad_scaler=grad_scaler,
                        max_steps=max_steps, checkpoint_every=checkpoint_every, comm=comm)

    def evaluate(self, data: Iterable, loss: Any = None, tta: "bool | int" = False,
                 comm: Any = None) -> dict:
        """``{"loss", "accuracy", "samples"}`` over ``data`` in eval mode (see
        :func:`gpuconv.training.loop.evaluate`); ``loss=None`` reuses fit's loss;
        ``tta=True`` averages the outputs over 6 mirrored/shifted views; ``comm``:
        each rank's ``data`` is its shard, the totals are summed over the ranks."""
        return loop.evaluate(self, data, loss, tta, comm)

    def predict(self, x: Array, batch_size: int = 256, tta: "bool | int" = False) -> Array:
        """Model outputs (device array (N, ...)) for ``x`` (N, ...) on the model's device,
        in eval mode; caches are cleared afterwards. ``tta=True``: the mean output over
        the image, its mirror and one-pixel shifts (:mod:`gpuconv.training.tta`)."""
        return loop.predict(self, x, batch_size, tta)

    def summary(self, input_shape: Sequence[int],
                print_fn: Callable[[str], None] | None = print) -> str:
        """Print and return the layer table for one sample of ``input_shape`` (no batch axis)."""
        return _summary(self, input_shape, print_fn)

    def save(self, path: "str | os.PathLike") -> None:
        """Write architecture and weights to one .npz at ``path`` (atomic, no pickles);
        read back with ``gpuconv.load_model``."""
        save_model(self, path)
