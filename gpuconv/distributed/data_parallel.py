"""What ``fit`` and ``evaluate`` do differently on several ranks, in one place.

:class:`DataParallel` is created by ``fit(..., comm=comm)`` when
``comm.size > 1``. Per run: compare the settings of all ranks
(:func:`~gpuconv.distributed.consistency.check_same`), then broadcast rank
0's parameters and buffers. Per step: average the gradients
(:class:`~gpuconv.distributed.gradients.GradientReducer`; summed for a loss
with ``reduction="sum"``) and agree on stopping (:meth:`DataParallel.agree`:
a stop request or a due checkpoint on one rank is one on all). Per epoch: sum
the loss/accuracy totals over the ranks so every rank logs the global
numbers (and therefore takes the same early-stopping and lr-schedule
decisions). ``GPUCONV_DIST_CHECK=1`` also compares a checksum of the weights
after every epoch.
"""
from __future__ import annotations

import os
from typing import Any

import numpy

from ..backend import get_array_module, to_numpy
from ..layers.base import Layer
from .comm import Communicator
from .consistency import check_same, code_identity
from .gradients import GradientReducer
from .model_sync import broadcast_model, check_identical
from .syncbn import bind_sync_batchnorm

__all__ = ["DataParallel", "reduce_epoch_stats", "CHECK_ENV", "STOP_REASONS"]

#: Set to 1 to check after every epoch that all ranks hold identical weights.
CHECK_ENV = "GPUCONV_DIST_CHECK"

#: Why training stops (``gpuconv.training.interrupts``), in the order :meth:`agree`
#: prefers them when ranks were asked for different reasons; any other is "callback".
STOP_REASONS = ("SIGINT", "SIGTERM", "callback")


def _host_comm(comm: Communicator) -> Communicator:
    """The communicator for small host buffers (NCCL's MPI side, else ``comm``)."""
    return getattr(comm, "mpi", comm)


def reduce_epoch_stats(comm: Communicator, stats: Any) -> None:
    """Sum an :class:`~gpuconv.training.stats.EpochStats`'s synced totals over the
    ranks, in place (one small host allreduce): afterwards ``loss``, ``accuracy``
    and ``samples`` describe the global data on every rank."""
    if comm.size == 1:
        return
    totals = numpy.array([stats.loss_sum, stats.correct_sum, stats.synced_samples,
                          stats.samples, stats.steps], dtype=numpy.float64)
    # a host buffer, whatever the training device: MPI on host memory
    _host_comm(comm).allreduce_sum([totals])
    stats.loss_sum = float(totals[0])
    stats.correct_sum = int(totals[1])
    stats.synced_samples = int(totals[2])
    stats.samples = int(totals[3])
    stats.steps = int(totals[4])


class DataParallel:
    """Data-parallel state of one ``fit`` call on ``comm`` (size > 1)."""

    def __init__(self, comm: Communicator, model: Layer, loss: Any = None) -> None:
        self.comm = comm
        self.model = model
        self.sync_bn_layers = bind_sync_batchnorm(model, comm)
        #: the loss sums over the batch (reduction="sum"): gradients are summed, not averaged
        self.summed_loss = getattr(loss, "reduction", "mean") == "sum"
        self.reducer = GradientReducer(comm, model.parameters(),
                                       average=not self.summed_loss)
        self.check = os.environ.get(CHECK_ENV, "") not in ("", "0")

    @property
    def is_main(self) -> bool:
        return self.comm.rank == 0

    def check_settings(self, optimizer: Any, loss: Any, train_data: Any) -> None:
        """SettingsMismatch unless every rank trains the same model the same way."""
        model = self.model
        try:
            batches = len(train_data)
        except TypeError:
            batches = None
        settings = {
            **code_identity(),
            "model": model.config() if hasattr(model, "config") else type(model).__name__,
            "parameters": [[name, list(p.shape), str(p.data.dtype)]
                           for name, p in model.named_parameters()],
            "optimizer": [type(optimizer).__name__,
                          optimizer.config() if hasattr(optimizer, "config") else None],
            "loss": [type(loss).__name__, {k: v for k, v in vars(loss).items()
                                           if isinstance(v, (bool, int, float, str))}],
            "batches_per_epoch": batches,
            "global_batch_size": getattr(train_data, "batch_size", None),
            "seed": getattr(train_data, "seed", None),
            "backend": self.comm.backend,
        }
        check_same(self.comm, settings, "training settings")

    def broadcast(self) -> None:
        """Rank 0's parameters and buffers on every rank."""
        broadcast_model(self.model, self.comm)

    def load_checkpoint(self, path: Any, load: Any) -> Any:
        """``load(path)`` on rank 0 only, the result broadcast (pickled) to all ranks:
        resuming works without a file system shared between hosts."""
        ckpt = load(path) if self.is_main else None
        return self.comm.broadcast_object(ckpt, root=0)

    def reduce_gradients(self, samples: int) -> None:
        self.reducer.reduce(samples)

    def all_finite(self, value: Any) -> bool:
        """Whether the loss is finite on every rank (``nan_policy='skip'``: all ranks
        must skip the same batches, or their collectives would pair up wrongly).
        ``value`` None: this rank has no loss (an empty shard) but joins."""
        local = value is None or bool(to_numpy(get_array_module(value).isfinite(value)))
        flags = numpy.array([0.0 if local else 1.0])
        _host_comm(self.comm).allreduce_sum([flags])
        return flags[0] == 0

    def agree(self, reason: "str | None", *flags: bool) -> tuple:
        """``(reason, *flags)`` the same on every rank, in one small host allreduce:
        the stop reason if any rank has one (None when none has), and each flag
        set if it is set on any rank. Called by every rank at the same point."""
        codes = numpy.zeros(len(STOP_REASONS) + len(flags), dtype=numpy.float64)
        if reason is not None:
            codes[STOP_REASONS.index(reason) if reason in STOP_REASONS else 2] = 1.0
        codes[len(STOP_REASONS):] = [1.0 if f else 0.0 for f in flags]
        _host_comm(self.comm).allreduce_sum([codes])
        asked = [r for r, c in zip(STOP_REASONS, codes) if c > 0]
        return (asked[0] if asked else None, *(bool(c > 0) for c in codes[len(STOP_REASONS):]))

    def after_train_epoch(self, stats: Any) -> None:
        """End of an epoch's training steps: sum the loss/accuracy totals over the
        ranks, and give every rank rank 0's buffers. With local BatchNorm the
        running statistics drift apart (each rank's come from its own shards);
        PyTorch DDP re-broadcasts them from rank 0 before every forward, we do
        it once per epoch, before validation and checkpoints, so evaluation and
        the saved model are the same on every rank."""
        reduce_epoch_stats(self.comm, stats)
        buffers = [b for _, b in self.model.named_buffers()]
        if buffers:
            self.comm.broadcast(buffers, root=0)

    def end_epoch(self, epoch: int) -> None:
        if self.check:
            check_identical(self.model, self.comm, f"after epoch {epoch}")
